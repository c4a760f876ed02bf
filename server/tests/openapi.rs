//! Keeps /api/v1/openapi.json true: every documented operation exists and answers with a
//! documented status carrying the documented required fields, and the served document is
//! the one generated from the handlers and the wire types.

mod common;

use common::TestServer;
use serde_json::Value;

/// Resolves `{"$ref": "#/components/schemas/X"}` (and allOf) to the required field names.
fn required_fields(spec: &Value, schema: &Value) -> Vec<String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return required_fields(spec, &spec["components"]["schemas"][name]);
    }
    let mut out: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        for p in parts {
            out.extend(required_fields(spec, p));
        }
    }
    out
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let s = TestServer::start().await;
    let (st, spec) = s.get("/api/v1/openapi.json", &s.admin_token).await;
    assert_eq!(st, 200);
    assert_eq!(
        spec,
        serde_json::from_str::<Value>(&doppel::openapi_document()).unwrap()
    );
    // An original container (so sync answers 409) and a job id that does not exist.
    let container = s.container_id("web-app").await;
    let project = s.project_id("web-platform").await;
    let paths = spec["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            operations += 1;
            let is_job = path.starts_with("/jobs/{id}");
            // A delete would take the container from the operations after it: an unknown one.
            let id = if is_job || method == "delete" {
                "000000000000000000000000"
            } else if path.starts_with("/projects/{id}") {
                project.as_str()
            } else {
                container.as_str()
            };
            let url = s.url(&format!(
                "/api/v1{}",
                path.replace("{id}", id).replace("{user}", "nobody-here")
            ));
            let req = match method.as_str() {
                "get" => TestServer::client().get(&url),
                // Empty bodies: a validation error, which must be documented too.
                "post" => TestServer::client().post(&url).json(&serde_json::json!({})),
                "put" => TestServer::client().put(&url).json(&serde_json::json!({})),
                "delete" => TestServer::client().delete(&url),
                "patch" => TestServer::client()
                    .patch(&url)
                    .json(&serde_json::json!({})),
                m => panic!("{path}: method {m} not covered"),
            };
            // A parameter it does not document is refused, not ignored (and nothing is done).
            let method_name =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let odd = TestServer::client()
                .request(method_name, format!("{url}?undocumented_option=1"))
                .json(&serde_json::json!({}))
                .bearer_auth(&s.admin_token)
                .send()
                .await
                .unwrap();
            assert_eq!(odd.status(), 400, "{method} {path}?undocumented_option=1");
            let odd: Value = odd.json().await.unwrap();
            assert_eq!(
                odd["error"]["field"], "undocumented_option",
                "{method} {path}: {odd}"
            );
            let resp = req.bearer_auth(&s.admin_token).send().await.unwrap();
            let status = resp.status().as_u16();
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key(&status.to_string()),
                "{method} {path}: status {status} is not documented"
            );
            let content = &responses[&status.to_string()]["content"];
            if content.get("text/event-stream").is_some() {
                assert_eq!(
                    resp.headers()["content-type"],
                    "text/event-stream",
                    "{path}"
                );
                continue; // a live stream: not read to its end here
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if method == "get" {
                let expected = if is_job { 404 } else { 200 };
                assert_eq!(status, expected, "{path}: {body}");
            }
            let schema = &content["application/json"]["schema"];
            for field in required_fields(&spec, schema) {
                assert!(
                    body.get(&field).is_some(),
                    "{method} {path}: {status} lacks {field}: {body}"
                );
            }
        }
    }
    assert!(operations >= 14, "{operations} operations documented");
}
