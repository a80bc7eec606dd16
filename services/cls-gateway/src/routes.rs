//! The route table of SPEC §3: which method and path is which route, and who may call it.

use cls_domain::Scope;
use hyper::Method;

/// Every public route. Path parameters are kept as text; a malformed id answers 404 later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    CreateBrand,
    ListBrands,
    CreateApiKey { brand_id: String },
    ListApiKeys { brand_id: String },
    RevokeApiKey { api_key_id: String },
    CreateProduct,
    ListProducts,
    GetOperation { id: String },
    Provision,
    ListLicenses,
    GetLicense { id: String },
    LicenseHistory { id: String },
    LookupKey,
    EcosystemLicenses,
    Renew { id: String },
    Suspend { id: String },
    Resume { id: String },
    Cancel { id: String },
    ChangeSeats { id: String },
    RotateKey { id: String },
    TransferKey { id: String },
    Activate,
    Deactivate,
    ReleaseActivation { id: String },
    Validate,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Admin,
    Brand(Scope),
    /// The principal that sent the command: the operator, a brand, or (with neither header) an
    /// end-user product, for which the unguessable operation id is the credential.
    Sender,
    /// End-user products: the license key in the body is the credential.
    Product,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    MethodNotAllowed(&'static [Method]),
}

impl Route {
    /// Matches a request line; a known path with another method is a 405.
    pub fn resolve(method: &Method, path: &str) -> Result<Route, Miss> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let owned = |s: &str| s.to_owned();
        let candidates: Vec<(Method, Route)> = match segments.as_slice() {
            ["health"] => vec![(Method::GET, Route::Health)],
            ["ready"] => vec![(Method::GET, Route::Ready)],
            ["v1", "admin", "brands"] => vec![(Method::POST, Route::CreateBrand), (Method::GET, Route::ListBrands)],
            ["v1", "admin", "brands", id, "api-keys"] => vec![
                (Method::POST, Route::CreateApiKey { brand_id: owned(id) }),
                (Method::GET, Route::ListApiKeys { brand_id: owned(id) }),
            ],
            ["v1", "admin", "api-keys", id] => vec![(Method::DELETE, Route::RevokeApiKey { api_key_id: owned(id) })],
            ["v1", "products"] => vec![(Method::POST, Route::CreateProduct), (Method::GET, Route::ListProducts)],
            ["v1", "operations", id] => vec![(Method::GET, Route::GetOperation { id: owned(id) })],
            ["v1", "licenses"] => vec![(Method::POST, Route::Provision), (Method::GET, Route::ListLicenses)],
            ["v1", "licenses", id] => vec![(Method::GET, Route::GetLicense { id: owned(id) })],
            ["v1", "licenses", id, "history"] => vec![(Method::GET, Route::LicenseHistory { id: owned(id) })],
            ["v1", "licenses", id, "renew"] => vec![(Method::POST, Route::Renew { id: owned(id) })],
            ["v1", "licenses", id, "suspend"] => vec![(Method::POST, Route::Suspend { id: owned(id) })],
            ["v1", "licenses", id, "resume"] => vec![(Method::POST, Route::Resume { id: owned(id) })],
            ["v1", "licenses", id, "cancel"] => vec![(Method::POST, Route::Cancel { id: owned(id) })],
            ["v1", "licenses", id, "seats"] => vec![(Method::POST, Route::ChangeSeats { id: owned(id) })],
            ["v1", "license-keys", id, "rotate"] => vec![(Method::POST, Route::RotateKey { id: owned(id) })],
            ["v1", "license-keys", id, "transfer"] => vec![(Method::POST, Route::TransferKey { id: owned(id) })],
            ["v1", "activations"] => vec![(Method::POST, Route::Activate)],
            ["v1", "activations", "deactivate"] => vec![(Method::POST, Route::Deactivate)],
            ["v1", "activations", id] => vec![(Method::DELETE, Route::ReleaseActivation { id: owned(id) })],
            ["v1", "license-keys", "lookup"] => vec![(Method::POST, Route::LookupKey)],
            ["v1", "license-keys", "validate"] => vec![(Method::POST, Route::Validate)],
            ["v1", "ecosystem", "licenses"] => vec![(Method::GET, Route::EcosystemLicenses)],
            _ => return Err(Miss::NotFound),
        };
        let allowed: Vec<&Method> = candidates.iter().map(|(m, _)| m).collect();
        match candidates.iter().find(|(m, _)| m == method) {
            Some((_, route)) => Ok(route.clone()),
            None => Err(Miss::MethodNotAllowed(leak_methods(&allowed))),
        }
    }

    pub fn access(&self) -> Access {
        match self {
            Route::Health | Route::Ready => Access::Public,
            Route::CreateBrand | Route::ListBrands | Route::CreateApiKey { .. } | Route::ListApiKeys { .. } | Route::RevokeApiKey { .. } => {
                Access::Admin
            }
            Route::CreateProduct
            | Route::Provision
            | Route::Renew { .. }
            | Route::Suspend { .. }
            | Route::Resume { .. }
            | Route::Cancel { .. }
            | Route::ChangeSeats { .. }
            | Route::RotateKey { .. }
            | Route::TransferKey { .. }
            | Route::ReleaseActivation { .. } => Access::Brand(Scope::LicensesWrite),
            Route::Activate | Route::Deactivate | Route::Validate => Access::Product,
            Route::ListProducts | Route::ListLicenses | Route::GetLicense { .. } | Route::LicenseHistory { .. } | Route::LookupKey => {
                Access::Brand(Scope::LicensesRead)
            }
            Route::EcosystemLicenses => Access::Brand(Scope::EcosystemRead),
            Route::GetOperation { .. } => Access::Sender,
        }
    }

    /// A stable label for metrics and logs (no ids).
    pub fn name(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Ready => "ready",
            Route::CreateBrand => "create_brand",
            Route::ListBrands => "list_brands",
            Route::CreateApiKey { .. } => "create_api_key",
            Route::ListApiKeys { .. } => "list_api_keys",
            Route::RevokeApiKey { .. } => "revoke_api_key",
            Route::CreateProduct => "create_product",
            Route::ListProducts => "list_products",
            Route::GetOperation { .. } => "get_operation",
            Route::Provision => "provision",
            Route::ListLicenses => "list_licenses",
            Route::GetLicense { .. } => "get_license",
            Route::LicenseHistory { .. } => "license_history",
            Route::LookupKey => "lookup_key",
            Route::EcosystemLicenses => "ecosystem_licenses",
            Route::Renew { .. } => "renew",
            Route::Suspend { .. } => "suspend",
            Route::Resume { .. } => "resume",
            Route::Cancel { .. } => "cancel",
            Route::ChangeSeats { .. } => "change_seats",
            Route::RotateKey { .. } => "rotate_key",
            Route::TransferKey { .. } => "transfer_key",
            Route::Activate => "activate",
            Route::Deactivate => "deactivate",
            Route::ReleaseActivation { .. } => "release_activation",
            Route::Validate => "validate",
        }
    }
}

/// The `Allow` sets are few and fixed; map them to statics instead of allocating per request.
fn leak_methods(allowed: &[&Method]) -> &'static [Method] {
    const GET: &[Method] = &[Method::GET];
    const POST: &[Method] = &[Method::POST];
    const DELETE: &[Method] = &[Method::DELETE];
    const GET_POST: &[Method] = &[Method::GET, Method::POST];
    match allowed {
        [m] if **m == Method::GET => GET,
        [m] if **m == Method::POST => POST,
        [m] if **m == Method::DELETE => DELETE,
        _ => GET_POST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve_and_misses_are_classified() {
        assert_eq!(Route::resolve(&Method::POST, "/v1/products"), Ok(Route::CreateProduct));
        assert_eq!(
            Route::resolve(&Method::DELETE, "/v1/admin/api-keys/abc"),
            Ok(Route::RevokeApiKey { api_key_id: "abc".into() })
        );
        assert_eq!(Route::resolve(&Method::GET, "/v1/nope"), Err(Miss::NotFound));
        assert!(matches!(Route::resolve(&Method::PUT, "/v1/products"), Err(Miss::MethodNotAllowed(_))));
        assert!(matches!(Route::resolve(&Method::POST, "/v1/admin/api-keys/x"), Err(Miss::MethodNotAllowed(m)) if m == [Method::DELETE]));
    }
}
