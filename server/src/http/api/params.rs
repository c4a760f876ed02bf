//! Every REST operation takes exactly the query parameters its OpenAPI document lists: any
//! other is refused (400 naming it), not ignored. A client sending an option an endpoint
//! does not have (`PATCH /users/x?disabled=true`, `DELETE ...?force=1`) would otherwise
//! think it was taken. One list, the document, so what is accepted is what is documented.

use std::collections::HashMap;
use std::sync::Arc;

use app::model::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{OpenApi, RefOr};

use super::RestError;

/// The query parameters of each operation, by method and path (as routed, `{id}` and all).
pub(super) struct Documented(HashMap<(Method, String), Vec<String>>);

impl Documented {
    pub(super) fn of(doc: &OpenApi) -> Documented {
        let mut takes = HashMap::new();
        for (path, item) in &doc.paths.paths {
            let shared = item.parameters.as_deref().unwrap_or_default();
            let operations: [(Method, &Option<Operation>); 5] = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ];
            for (method, op) in operations {
                let Some(op) = op else { continue };
                let own = op.parameters.as_deref().unwrap_or_default();
                let names = shared
                    .iter()
                    .chain(own)
                    .filter_map(|p| match p {
                        RefOr::T(p) if p.parameter_in == ParameterIn::Query => Some(p.name.clone()),
                        _ => None,
                    })
                    .collect();
                takes.insert((method, path.clone()), names);
            }
        }
        Documented(takes)
    }

    /// Why a request of `method` to the route `path` with `query` is refused, if it is
    /// (`None` also for a route the document does not list).
    fn refusal(&self, method: &Method, path: &str, query: &str) -> Option<ApiError> {
        let path = path.strip_prefix("/api/v1").unwrap_or(path);
        let takes = self.0.get(&(method.clone(), path.to_string()))?;
        let unknown = form_urlencoded::parse(query.as_bytes())
            .map(|(key, _)| key)
            .find(|key| !key.is_empty() && !takes.iter().any(|t| t == key))?;
        let known = match takes.as_slice() {
            [] => "it takes none".to_string(),
            names => format!("it takes {}", names.join(", ")),
        };
        Some(
            ApiError::invalid(format!(
                "bad query string: {unknown:?} is not a parameter of this request ({known})"
            ))
            .on_field(&unknown),
        )
    }
}

/// The middleware: a request with a parameter its operation does not take is a 400.
pub(super) async fn refuse_undocumented(
    State(documented): State<Arc<Documented>>,
    request: Request,
    next: Next,
) -> Response {
    let refused = match (
        request.extensions().get::<MatchedPath>(),
        request.uri().query(),
    ) {
        (Some(path), Some(query)) => documented.refusal(request.method(), path.as_str(), query),
        _ => None,
    };
    match refused {
        Some(e) => RestError(e).into_response(),
        None => next.run(request).await,
    }
}
