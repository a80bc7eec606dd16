//! The route table of SPEC §3: which method and path is which route, and who may call it.

use cls_domain::Scope;
use hyper::Method;

/// Every public route. Path parameters are kept as text; a malformed id answers 404 later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    OpenApi,
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

/// One entry of the route table: the method, the path template (`{name}` stands for the one
/// path parameter a route may have, kept as text) and how to build the route from it.
pub type Entry = (Method, &'static str, fn(String) -> Route);

/// The route table: every public route, once. `docs/openapi.json` documents exactly these
/// methods and templates (the e2e test `openapi` holds the two together). A path takes the first
/// template it fits, so a literal segment listed before a parameter wins
/// (`/v1/activations/deactivate` is not an activation id).
pub static ROUTES: &[Entry] = &[
    (Method::GET, "/health", |_| Route::Health),
    (Method::GET, "/ready", |_| Route::Ready),
    (Method::GET, "/openapi.json", |_| Route::OpenApi),
    (Method::GET, "/v1/admin/brands", |_| Route::ListBrands),
    (Method::POST, "/v1/admin/brands", |_| Route::CreateBrand),
    (Method::GET, "/v1/admin/brands/{brand_id}/api-keys", |brand_id| Route::ListApiKeys { brand_id }),
    (Method::POST, "/v1/admin/brands/{brand_id}/api-keys", |brand_id| Route::CreateApiKey { brand_id }),
    (Method::DELETE, "/v1/admin/api-keys/{api_key_id}", |api_key_id| Route::RevokeApiKey { api_key_id }),
    (Method::GET, "/v1/products", |_| Route::ListProducts),
    (Method::POST, "/v1/products", |_| Route::CreateProduct),
    (Method::GET, "/v1/operations/{operation_id}", |id| Route::GetOperation { id }),
    (Method::GET, "/v1/licenses", |_| Route::ListLicenses),
    (Method::POST, "/v1/licenses", |_| Route::Provision),
    (Method::GET, "/v1/licenses/{license_id}", |id| Route::GetLicense { id }),
    (Method::GET, "/v1/licenses/{license_id}/history", |id| Route::LicenseHistory { id }),
    (Method::POST, "/v1/licenses/{license_id}/renew", |id| Route::Renew { id }),
    (Method::POST, "/v1/licenses/{license_id}/suspend", |id| Route::Suspend { id }),
    (Method::POST, "/v1/licenses/{license_id}/resume", |id| Route::Resume { id }),
    (Method::POST, "/v1/licenses/{license_id}/cancel", |id| Route::Cancel { id }),
    (Method::POST, "/v1/licenses/{license_id}/seats", |id| Route::ChangeSeats { id }),
    (Method::POST, "/v1/license-keys/{license_key_id}/rotate", |id| Route::RotateKey { id }),
    (Method::POST, "/v1/license-keys/{license_key_id}/transfer", |id| Route::TransferKey { id }),
    (Method::POST, "/v1/activations", |_| Route::Activate),
    (Method::POST, "/v1/activations/deactivate", |_| Route::Deactivate),
    (Method::DELETE, "/v1/activations/{activation_id}", |id| Route::ReleaseActivation { id }),
    (Method::POST, "/v1/license-keys/lookup", |_| Route::LookupKey),
    (Method::POST, "/v1/license-keys/validate", |_| Route::Validate),
    (Method::GET, "/v1/ecosystem/licenses", |_| Route::EcosystemLicenses),
];

impl Route {
    /// Matches a request line against [`ROUTES`]; a known path with another method is a 405.
    pub fn resolve(method: &Method, path: &str) -> Result<Route, Miss> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (template, param) =
            ROUTES.iter().find_map(|(_, template, _)| fits(template, &segments).map(|param| (*template, param))).ok_or(Miss::NotFound)?;
        let entries = || ROUTES.iter().filter(move |(_, t, _)| *t == template);
        match entries().find(|(m, _, _)| m == method) {
            Some((_, _, build)) => Ok(build(param.to_owned())),
            None => Err(Miss::MethodNotAllowed(leak_methods(&entries().map(|(m, _, _)| m).collect::<Vec<_>>()))),
        }
    }

    pub fn access(&self) -> Access {
        match self {
            Route::Health | Route::Ready | Route::OpenApi => Access::Public,
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
            Route::OpenApi => "openapi",
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

/// The path parameter (empty when the template has none) if `segments` fit `template`.
/// One pass over the template, stopping at the first segment that differs (this runs for every
/// entry tried on every request).
fn fits<'a>(template: &str, segments: &[&'a str]) -> Option<&'a str> {
    let mut parts = template.trim_start_matches('/').split('/');
    let mut param = "";
    for segment in segments {
        let part = parts.next()?;
        if part.starts_with('{') {
            param = segment;
        } else if part != *segment {
            return None;
        }
    }
    parts.next().is_none().then_some(param)
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
        assert_eq!(Route::resolve(&Method::POST, "/v1/activations/deactivate"), Ok(Route::Deactivate));
        assert!(matches!(Route::resolve(&Method::DELETE, "/v1/activations/deactivate"), Err(Miss::MethodNotAllowed(_))));
        assert_eq!(Route::resolve(&Method::GET, "/v1/licenses/a/b"), Err(Miss::NotFound));
    }

    /// Each entry is reachable (no earlier template shadows it), is listed once, and every other
    /// method on its path is a 405 that names exactly the path's methods.
    #[test]
    fn every_entry_of_the_table_resolves_to_its_route() {
        let id = "0190a000-0000-7000-8000-000000000001";
        for (i, (method, template, build)) in ROUTES.iter().enumerate() {
            assert!(!ROUTES[..i].iter().any(|(m, t, _)| m == method && t == template), "{method} {template} is listed twice");
            let path: Vec<&str> = template.split('/').map(|part| if part.starts_with('{') { id } else { part }).collect();
            let path = path.join("/");
            let param = if template.contains('{') { id } else { "" };
            assert_eq!(Route::resolve(method, &path), Ok(build(param.to_owned())), "{method} {template}");
            let methods: Vec<&Method> = ROUTES.iter().filter(|(_, t, _)| t == template).map(|(m, _, _)| m).collect();
            for other in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
                if methods.contains(&&other) {
                    continue;
                }
                let Err(Miss::MethodNotAllowed(allowed)) = Route::resolve(&other, &path) else {
                    panic!("{other} {template} should be a 405");
                };
                assert!(allowed.len() == methods.len() && methods.iter().all(|m| allowed.contains(m)), "Allow of {template}: {allowed:?}");
            }
        }
    }
}
