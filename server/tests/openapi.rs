//! Keeps /api/v1/openapi.json true: every documented GET answers with a documented status
//! and carries the documented required fields, and the served document is the file.

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
async fn every_documented_endpoint_answers_as_documented() {
    let s = TestServer::start().await;
    let (st, spec) = s.get("/api/v1/openapi.json", &s.admin_token).await;
    assert_eq!(st, 200);
    assert_eq!(
        spec,
        serde_json::from_str::<Value>(doppel::rest::OPENAPI).unwrap()
    );
    let container = s.container_id("web-app").await;
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 7);
    for (path, ops) in paths {
        let get = &ops["get"];
        assert!(get.is_object(), "{path}: only GET endpoints so far");
        // No jobs exist yet: a job id path must answer 404 as documented.
        let concrete = path.replace("{id}", &container);
        let (status, body) = s.get(&format!("/api/v1{concrete}"), &s.admin_token).await;
        // Every path answers 200 but a job by id: no jobs exist yet.
        let expected = if path == "/jobs/{id}" { 404 } else { 200 };
        assert_eq!(status, expected, "{path}: {body}");
        let responses = get["responses"].as_object().unwrap();
        assert!(
            responses.contains_key(&status.to_string()),
            "{path}: status {status} is not documented: {body}"
        );
        let schema = &responses[&status.to_string()]["content"]["application/json"]["schema"];
        for field in required_fields(&spec, schema) {
            assert!(
                body.get(&field).is_some(),
                "{path}: {status} lacks {field}: {body}"
            );
        }
    }
}
