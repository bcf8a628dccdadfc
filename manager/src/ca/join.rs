//! The cluster's two join tokens (worker, manager) and which role a presented token grants.
//!
//! Both tokens carry the root CA digest and differ in their secret. A presented token is
//! compared with both secrets in constant time (no early exit, both comparisons always
//! run), so timing tells a caller nothing about how close a guess was.

use berth_proto::identity::{JoinToken, Role, TokenError};

use super::{CaError, RootCa};

/// Why a presented join token grants nothing.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is not a well-formed Berth token.
    #[error("invalid join token: {0}")]
    Malformed(#[from] TokenError),
    /// The token names another root CA (another cluster, or a rotated root).
    #[error(
        "join token is for a different cluster (its CA digest does not match this cluster's root CA)"
    )]
    OtherCluster,
    /// Right cluster, but the secret matches neither current token (wrong or rotated).
    #[error("invalid join token: the secret matches neither the worker nor the manager token")]
    WrongSecret,
}

/// The worker and manager join tokens of a cluster.
#[derive(Clone, Debug)]
pub struct JoinTokens {
    worker: JoinToken,
    manager: JoinToken,
}

impl JoinTokens {
    /// Two fresh tokens for `ca`.
    pub fn generate(ca: &RootCa) -> Result<Self, CaError> {
        Ok(Self {
            worker: ca.new_join_token()?,
            manager: ca.new_join_token()?,
        })
    }

    /// Rebuilds the pair from stored tokens (e.g. the cluster object).
    pub fn from_tokens(worker: JoinToken, manager: JoinToken) -> Self {
        Self { worker, manager }
    }

    /// The token that admits nodes with `role`.
    pub fn get(&self, role: Role) -> &JoinToken {
        match role {
            Role::Worker => &self.worker,
            Role::Manager => &self.manager,
        }
    }

    /// Replaces the token for `role` with a new secret (`join-token --rotate`). Nodes that
    /// already joined are unaffected.
    pub fn rotate(&mut self, role: Role) -> Result<(), CaError> {
        let slot = match role {
            Role::Worker => &mut self.worker,
            Role::Manager => &mut self.manager,
        };
        *slot = slot.rotated()?;
        Ok(())
    }

    /// The role a presented token grants.
    pub fn role_of(&self, presented: &str) -> Result<Role, JoinError> {
        let token = JoinToken::parse(presented)?;
        // Both comparisons always run.
        let is_worker = self.worker.matches(&token);
        let is_manager = self.manager.matches(&token);
        match (is_worker, is_manager) {
            (_, true) => Ok(Role::Manager),
            (true, false) => Ok(Role::Worker),
            (false, false) if token.ca_digest() != self.worker.ca_digest() => {
                Err(JoinError::OtherCluster)
            }
            (false, false) => Err(JoinError::WrongSecret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_grants_its_role_and_rotation_revokes_the_old_secret() {
        let ca = RootCa::generate().expect("ca");
        let mut tokens = JoinTokens::generate(&ca).expect("tokens");
        let worker = tokens.get(Role::Worker).to_string();
        let manager = tokens.get(Role::Manager).to_string();
        assert_ne!(worker, manager);
        assert_eq!(
            tokens.get(Role::Worker).ca_digest(),
            tokens.get(Role::Manager).ca_digest()
        );
        assert_eq!(tokens.role_of(&worker).expect("worker"), Role::Worker);
        assert_eq!(tokens.role_of(&manager).expect("manager"), Role::Manager);

        tokens.rotate(Role::Worker).expect("rotate");
        assert!(matches!(
            tokens.role_of(&worker),
            Err(JoinError::WrongSecret)
        ));
        assert_ne!(tokens.get(Role::Worker).to_string(), worker);
        // The manager token is untouched by a worker rotation.
        assert_eq!(tokens.role_of(&manager).expect("manager"), Role::Manager);
        let new_worker = tokens.get(Role::Worker).to_string();
        assert_eq!(tokens.role_of(&new_worker).expect("new"), Role::Worker);
    }

    #[test]
    fn tokens_of_another_cluster_and_garbage_are_refused() {
        let ca = RootCa::generate().expect("ca");
        let other = RootCa::generate().expect("other");
        let tokens = JoinTokens::generate(&ca).expect("tokens");
        let foreign = JoinTokens::generate(&other).expect("foreign");
        let err = tokens
            .role_of(&foreign.get(Role::Manager).to_string())
            .expect_err("foreign");
        assert!(matches!(err, JoinError::OtherCluster), "{err}");
        assert!(matches!(
            tokens.role_of("SWMTKN-1-abc-def"),
            Err(JoinError::Malformed(TokenError::WrongPrefix { .. }))
        ));
    }
}
