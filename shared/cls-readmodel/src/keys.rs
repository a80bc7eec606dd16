//! The Redis key names of the read model, all under `<ns>:rm:`.

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Keys {
        Keys { prefix: format!("{namespace}:rm:") }
    }

    /// Every key of the read model starts with this (`<ns>:rm:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Changes whenever the read model was wiped; fills and writes carry the value they started
    /// from, so a write computed before a wipe cannot land after it.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// A license key by the hash of the key.
    pub fn key(&self, hash: &str) -> String {
        format!("{}key:{hash}", self.prefix)
    }

    pub fn license(&self, id: Uuid) -> String {
        format!("{}lic:{id}", self.prefix)
    }

    /// An API key by the hash of its secret.
    pub fn api_key(&self, hash: &str) -> String {
        format!("{}ak:{hash}", self.prefix)
    }

    /// The version of a license key the read model holds (written with its documents).
    pub fn key_marker(&self, id: Uuid) -> String {
        format!("{}v:key:{id}", self.prefix)
    }

    pub fn api_key_marker(&self, id: Uuid) -> String {
        format!("{}v:ak:{id}", self.prefix)
    }
}
