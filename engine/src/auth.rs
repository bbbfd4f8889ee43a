//! Who may use the query and operations API. Operators are configured as `[[operators]]` with a
//! name, a role (`viewer < operator < approver < admin`) and the environment variable holding
//! their token; every `/v1/orders*`, `/v1/dispatch/*`, `/v1/sources`, `/v1/stock*`,
//! `/v1/approvals*` and `/v1/reports*` request carries `Authorization: Bearer <token>` (compared in constant time): `401` without
//! or with a wrong token, `403` for a role below the route's (deciding an approval: below its
//! flow's). With no operator configured the engine logs a
//! loud warning at start-up and the API answers loopback callers only. `/healthz`, `/readyz`,
//! `/metrics` and signed ingest are not behind it.

use crate::AppState;
use crate::config::{OperatorConfig, Role};
use crate::envelope::error_response;
use crate::secrets::SecretLookup;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// An operator whose token could be read.
struct Operator {
    name: String,
    role: Role,
    token: Vec<u8>,
}

/// The operators the API accepts.
pub(crate) struct Operators {
    operators: Vec<Operator>,
    /// True when none is configured: loopback callers only.
    loopback_only: bool,
}

/// Why a request may not use the API.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Denied {
    /// No token, or one that is no operator's.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The operator's role is below the route's.
    #[error("operator {name} has role {role}; this needs {needed} or above")]
    Forbidden {
        name: String,
        role: &'static str,
        needed: &'static str,
    },
    /// No operator is configured and the caller is not on loopback.
    #[error("no operators are configured: the API answers loopback callers only")]
    LoopbackOnly,
}

impl axum::response::IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized(message) => {
                let mut response =
                    error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            other => error_response(StatusCode::FORBIDDEN, "forbidden", &other.to_string()),
        }
    }
}

/// Who made a request, for the handlers (and the timeline) to name.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The operator's name (`loopback` when no operator is configured).
    pub(crate) name: String,
    /// The operator's role (`None`: a loopback caller while no operator is configured).
    pub(crate) role: Option<Role>,
}

impl Caller {
    /// Whether the caller may see personal data in full (phone numbers): an operator or above.
    pub(crate) fn sees_personal_data(&self) -> bool {
        self.role.is_some_and(|role| role >= Role::Operator)
    }
}

impl Operators {
    /// Reads every configured operator's token; one whose variable is not set cannot sign in
    /// (logged, naming the variable).
    pub(crate) fn new(configured: &[OperatorConfig], secrets: &SecretLookup) -> Self {
        let mut operators = Vec::new();
        for operator in configured {
            match crate::secrets::secret(secrets, &operator.token_env) {
                Ok(token) => operators.push(Operator {
                    name: operator.name.clone(),
                    role: operator.role,
                    token: token.into_bytes(),
                }),
                Err(reason) => {
                    tracing::warn!(operator = %operator.name, %reason, "operator cannot sign in")
                }
            }
        }
        let loopback_only = configured.is_empty();
        if loopback_only {
            tracing::warn!(
                "NO OPERATORS CONFIGURED: the query and operations API (/v1/orders, /v1/dispatch, \
                 /v1/sources, /v1/stock, /v1/approvals, /v1/reports) answers loopback callers only; add [[operators]] with tokens to open it"
            );
        }
        Operators {
            operators,
            loopback_only,
        }
    }

    /// The operator whose token `given` is, comparing with every operator in constant time.
    fn find(&self, given: &[u8]) -> Option<&Operator> {
        let mut found = None;
        for operator in &self.operators {
            if bool::from(operator.token.ct_eq(given)) {
                found = Some(operator);
            }
        }
        found
    }

    /// Whether a request with `authorization` from `peer` may use a route needing `role`.
    pub(crate) fn check(
        &self,
        authorization: Option<&str>,
        peer: Option<SocketAddr>,
        role: Role,
    ) -> Result<Caller, Denied> {
        if self.loopback_only {
            return match peer {
                Some(peer) if peer.ip().is_loopback() => Ok(Caller {
                    name: "loopback".into(),
                    role: None,
                }),
                _ => Err(Denied::LoopbackOnly),
            };
        }
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(Denied::Unauthorized(
                "missing Authorization: Bearer <token> (an operator's token)",
            ))?;
        let operator = self
            .find(token.trim().as_bytes())
            .ok_or(Denied::Unauthorized("the token is no operator's"))?;
        if operator.role < role {
            return Err(Denied::Forbidden {
                name: operator.name.clone(),
                role: operator.role.as_str(),
                needed: role.as_str(),
            });
        }
        Ok(Caller {
            name: operator.name.clone(),
            role: Some(operator.role),
        })
    }
}

/// The role a request needs: reading needs a viewer, anything else an operator.
fn needed(request: &Request) -> Role {
    if request.method() == axum::http::Method::GET {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// The ops board's pages and streams (`/board`, `/v1/board/*`) also take the token as
/// `?token=…`: a browser's EventSource cannot send headers. Nowhere else.
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    let path = uri.path();
    if path != "/board" && !path.starts_with("/board/") && !path.starts_with("/v1/board/") {
        return None;
    }
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .filter(|token| !token.is_empty())
}

/// Middleware of the protected routes.
pub(crate) async fn require_operator(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let from_query = query_token(request.uri()).map(|token| format!("Bearer {token}"));
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .or(from_query.as_deref());
    match app.operators.check(authorization, peer, needed(&request)) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(denied) => axum::response::IntoResponse::into_response(denied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_boards_routes_take_a_token_in_the_query() {
        let token = |uri: &str| query_token(&uri.parse().unwrap());
        assert_eq!(
            token("/board?view=floor&token=abc%2Bd"),
            Some("abc+d".into())
        );
        assert_eq!(token("/v1/board/events?token=t1"), Some("t1".into()));
        assert_eq!(token("/v1/orders?token=t1"), None, "headers only elsewhere");
        assert_eq!(token("/boardroom?token=t1"), None);
        assert_eq!(token("/board?token="), None);
    }

    fn operators() -> Operators {
        let configured = [
            ("li.na", Role::Approver, "TOKEN_LINA"),
            ("wang.wei", Role::Viewer, "TOKEN_WANG"),
            ("gone", Role::Admin, "TOKEN_UNSET"),
        ]
        .map(|(name, role, env)| OperatorConfig {
            name: name.into(),
            role,
            token_env: env.into(),
        });
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "TOKEN_LINA" => Some("lina-secret".into()),
            "TOKEN_WANG" => Some("wang-secret".into()),
            _ => None,
        });
        Operators::new(&configured, &secrets)
    }

    fn status(result: Result<Caller, Denied>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(denied) => axum::response::IntoResponse::into_response(denied)
                .status()
                .as_u16(),
        }
    }

    #[test]
    fn tokens_roles_and_loopback() {
        let ops = operators();
        let remote: Option<SocketAddr> = Some("203.0.113.9:5000".parse().unwrap());
        assert_eq!(status(ops.check(None, remote, Role::Viewer)), 401);
        assert_eq!(
            status(ops.check(Some("Bearer nope"), remote, Role::Viewer)),
            401
        );
        assert_eq!(
            status(ops.check(Some("Basic lina-secret"), remote, Role::Viewer)),
            401
        );
        let lina = ops.check(Some("Bearer lina-secret"), remote, Role::Operator);
        assert_eq!(lina.unwrap().name, "li.na");
        assert_eq!(
            status(ops.check(Some("Bearer wang-secret"), remote, Role::Viewer)),
            200
        );
        assert_eq!(
            status(ops.check(Some("Bearer wang-secret"), remote, Role::Operator)),
            403
        );
        // An operator whose variable is unset cannot sign in, even with an empty token.
        assert_eq!(
            status(ops.check(Some("Bearer "), remote, Role::Viewer)),
            401
        );

        let open = Operators::new(&[], &(Arc::new(|_: &str| None) as SecretLookup));
        let local: Option<SocketAddr> = Some("127.0.0.1:5000".parse().unwrap());
        assert_eq!(status(open.check(None, local, Role::Admin)), 200);
        assert_eq!(status(open.check(None, remote, Role::Viewer)), 403);
        let v6: Option<SocketAddr> = Some("[::1]:5000".parse().unwrap());
        assert_eq!(status(open.check(None, v6, Role::Viewer)), 200);
    }
}
