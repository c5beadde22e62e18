//! The OpenAPI document served at `/api/v1/openapi.json` checked against the router and
//! the handlers: it documents exactly the routes the router mounts, each of them really
//! routed, every `$ref` resolves, and real responses (status, content type, headers and
//! JSON body) conform to what the document says for that operation.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

/// Every route `server/src/router.rs` mounts, as (method, path). Maintained by hand on
/// purpose: a route added to the router but not here (or not in the document) fails.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/devices/register"),
    ("POST", "/api/v1/devices/rollback"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/{device_id}"),
    ("PATCH", "/api/v1/devices/{device_id}"),
    ("DELETE", "/api/v1/devices/{device_id}"),
    ("POST", "/api/v1/devices/{device_id}/heartbeat"),
    ("GET", "/api/v1/devices/{device_id}/heartbeats"),
    ("POST", "/api/v1/devices/{device_id}/accept"),
    ("POST", "/api/v1/devices/{device_id}/reject"),
    ("GET", "/api/v1/devices/{device_id}/bundle-history"),
    ("GET", "/api/v1/devices/{device_id}/config"),
    ("PUT", "/api/v1/devices/{device_id}/config"),
    ("GET", "/api/v1/bundles"),
    ("POST", "/api/v1/bundles"),
    ("GET", "/api/v1/bundles/{bundle_id}"),
    ("DELETE", "/api/v1/bundles/{bundle_id}"),
    ("GET", "/api/v1/bundles/{bundle_id}/info"),
    ("GET", "/api/v1/bundles/{bundle_id}/signatures"),
    ("POST", "/api/v1/bundles/{bundle_id}/signatures"),
    ("GET", "/api/v1/trust"),
    ("PUT", "/api/v1/trust"),
    ("GET", "/api/v1/deployments"),
    ("POST", "/api/v1/deployments"),
    ("GET", "/api/v1/deployments/{deployment_id}"),
    ("GET", "/api/v1/deployments/{deployment_id}/targets"),
    ("POST", "/api/v1/deployments/{deployment_id}/cancel"),
    ("POST", "/api/v1/deployments/{deployment_id}/pause"),
    ("POST", "/api/v1/deployments/{deployment_id}/resume"),
    ("POST", "/api/v1/deployments/{deployment_id}/progress"),
    ("POST", "/api/v1/deployments/{deployment_id}/result"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{name}"),
    ("GET", "/api/v1/backup"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
];

/// Operations that take no bearer token.
const UNAUTHENTICATED: &[(&str, &str)] = &[
    ("POST", "/api/v1/devices/register"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
];

/// Statuses the key handlers produce (each is also produced for real in
/// `real_responses_conform_to_the_document`).
const KEY_STATUSES: &[(&str, &str, &[&str])] = &[
    (
        "POST",
        "/api/v1/devices/register",
        &["200", "201", "400", "401", "403", "413", "503"],
    ),
    (
        "POST",
        "/api/v1/bundles",
        &["201", "400", "401", "403", "409", "413"],
    ),
    (
        "GET",
        "/api/v1/bundles/{bundle_id}",
        &["200", "206", "304", "401", "403", "404", "416"],
    ),
    (
        "DELETE",
        "/api/v1/bundles/{bundle_id}",
        &["204", "404", "409"],
    ),
    (
        "POST",
        "/api/v1/deployments/{deployment_id}/progress",
        &["204", "400", "403", "404"],
    ),
    (
        "POST",
        "/api/v1/deployments/{deployment_id}/result",
        &["200", "400", "403", "404"],
    ),
    (
        "PUT",
        "/api/v1/devices/{device_id}/config",
        &["200", "400", "403", "404", "413"],
    ),
    ("POST", "/api/v1/tokens", &["201", "400", "409"]),
    (
        "DELETE",
        "/api/v1/tokens/{name}",
        &["204", "401", "404", "409"],
    ),
    ("DELETE", "/api/v1/devices/{device_id}", &["204", "404"]),
];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The generic body of the router's fallback (an unmatched path).
fn generic_not_found() -> Value {
    json!({"error": "not_found", "message": "no such endpoint"})
}

async fn fetch_doc(app: &TestApp) -> Value {
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// All (METHOD, path) operations of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (key, _) in item.as_object().unwrap() {
            if HTTP_METHODS.contains(&key.as_str()) {
                ops.insert((key.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// A concrete path for a template: every `{param}` becomes an id that does not exist.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str("no-such-id-0");
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Follow a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                if k == "$ref"
                    && let Some(s) = val.as_str()
                {
                    out.push(s.to_owned());
                }
                collect_refs(val, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
        _ => {}
    }
}

/// `^[CLASS]{m,n}$` — the only regex form the document uses (no regex crate here).
fn pattern_matches(pattern: &str, s: &str) -> bool {
    let (class, rest) = pattern
        .strip_prefix("^[")
        .and_then(|p| p.split_once(']'))
        .unwrap_or_else(|| panic!("unsupported pattern {pattern:?}"));
    let counts = rest
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix("}$"))
        .unwrap_or_else(|| panic!("unsupported pattern {pattern:?}"));
    let (lo, hi) = match counts.split_once(',') {
        Some((a, b)) => (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()),
        None => {
            let n = counts.parse::<usize>().unwrap();
            (n, n)
        }
    };
    let chars: Vec<char> = class.chars().collect();
    let allowed = |c: char| {
        let mut i = 0;
        while i < chars.len() {
            if i + 2 < chars.len() && chars[i + 1] == '-' {
                if (chars[i]..=chars[i + 2]).contains(&c) {
                    return true;
                }
                i += 3;
            } else {
                if chars[i] == c {
                    return true;
                }
                i += 1;
            }
        }
        false
    };
    (lo..=hi).contains(&s.chars().count()) && s.chars().all(allowed)
}

/// The `type` of a schema as a list: OpenAPI 3.1 writes a nullable one as
/// `["string", "null"]`.
fn types_of(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether `schema` (or, through `allOf`, any part of it) names `name` as a property.
fn names_property(doc: &Value, schema: &Value, name: &str) -> bool {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r).unwrap_or_else(|| panic!("unresolvable $ref {r}")),
        None => schema,
    };
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| p.contains_key(name))
        || schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|s| names_property(doc, s, name))
}

/// A small OpenAPI 3.1 schema validator for the subset the generated document uses.
/// Strict about undocumented object fields (unless `additionalProperties: true`), also
/// across the parts of an `allOf`, so a field added to a wire type without documenting it
/// fails.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    validate_in(doc, schema, v, at, true, errs);
}

fn validate_in(
    doc: &Value,
    schema: &Value,
    v: &Value,
    at: &str,
    strict: bool,
    errs: &mut Vec<String>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = resolve(doc, r).unwrap_or_else(|| panic!("unresolvable $ref {r}"));
        return validate_in(doc, target, v, at, strict, errs);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        // Each part leniently; then no field that no part names.
        for s in all {
            validate_in(doc, s, v, at, false, errs);
        }
        if strict && let Some(map) = v.as_object() {
            for k in map.keys() {
                if !names_property(doc, schema, k) && !open_object(doc, schema) {
                    errs.push(format!("{at}: undocumented field {k:?}"));
                }
            }
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|s| {
                let mut e = Vec::new();
                validate_in(doc, s, v, at, strict, &mut e);
                e.is_empty()
            })
            .count();
        if matching != 1 {
            errs.push(format!("{at}: matches {matching} oneOf alternatives: {v}"));
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let matched = any.iter().any(|s| {
            let mut e = Vec::new();
            validate_in(doc, s, v, at, strict, &mut e);
            e.is_empty()
        });
        if !matched {
            errs.push(format!("{at}: matches none of anyOf: {v}"));
        }
    }
    let types = types_of(schema);
    if v.is_null() {
        // A typeless schema without an enum takes any value (its `oneOf`/`anyOf`, if
        // any, judged it above).
        let any_value = types.is_empty() && schema.get("enum").is_none();
        if !(types.contains(&"null")
            || schema.get("nullable") == Some(&Value::Bool(true))
            || any_value)
        {
            errs.push(format!("{at}: null but not nullable"));
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(v)
        {
            errs.push(format!("{at}: {v} not in enum {options:?}"));
        }
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        errs.push(format!("{at}: {v} not in enum {options:?}"));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    let len = |k: &str| {
        schema
            .get(k)
            .and_then(Value::as_u64)
            .map(|n| usize::try_from(n).unwrap())
    };
    if !types.is_empty() {
        let actual = match v {
            Value::Object(_) => "object",
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            _ => "number",
        };
        if !(types.contains(&actual) || (actual == "integer" && types.contains(&"number"))) {
            errs.push(format!("{at}: expected {types:?}, got {v}"));
            return;
        }
    }
    let ty = types.iter().copied().find(|t| *t != "null");
    match ty {
        Some("object") => {
            let Some(map) = v.as_object() else {
                errs.push(format!("{at}: expected an object, got {v}"));
                return;
            };
            validate_object(doc, schema, map, at, strict, errs);
        }
        // A typeless constraint (an `anyOf` branch): its object keywords, leniently.
        None if v.is_object() => {
            validate_object(doc, schema, v.as_object().unwrap(), at, false, errs);
        }
        Some("array") => {
            let Some(items) = v.as_array() else {
                errs.push(format!("{at}: expected an array, got {v}"));
                return;
            };
            if len("minItems").is_some_and(|n| items.len() < n)
                || len("maxItems").is_some_and(|n| items.len() > n)
            {
                errs.push(format!("{at}: {} items is out of range", items.len()));
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(doc, s, item, &format!("{at}[{i}]"), errs);
                }
            }
        }
        Some("string") => {
            let Some(s) = v.as_str() else {
                errs.push(format!("{at}: expected a string, got {v}"));
                return;
            };
            let n = s.chars().count();
            if len("minLength").is_some_and(|m| n < m) || len("maxLength").is_some_and(|m| n > m) {
                errs.push(format!("{at}: length {n} is out of range"));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                && !pattern_matches(p, s)
            {
                errs.push(format!("{at}: {s:?} does not match {p}"));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && chrono::DateTime::parse_from_rfc3339(s).is_err()
            {
                errs.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
            }
        }
        Some(t @ ("integer" | "number")) => {
            let ok = if t == "integer" {
                v.is_i64() || v.is_u64()
            } else {
                v.is_number()
            };
            if !ok {
                errs.push(format!("{at}: expected {t}, got {v}"));
                return;
            }
            let x = v.as_f64().unwrap();
            if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
                errs.push(format!("{at}: {x} is out of range"));
            }
        }
        Some("boolean") if !v.is_boolean() => {
            errs.push(format!("{at}: expected a boolean, got {v}"));
        }
        _ => {}
    }
}

/// Whether an object schema (or a part of its `allOf`) allows any further field.
fn open_object(doc: &Value, schema: &Value) -> bool {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r).unwrap(),
        None => schema,
    };
    schema.get("additionalProperties") == Some(&Value::Bool(true))
        || schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|s| open_object(doc, s))
}

/// `required` and `properties`; with `strict`, fields the schema does not name are errors
/// unless it says `additionalProperties: true`.
fn validate_object(
    doc: &Value,
    schema: &Value,
    map: &serde_json::Map<String, Value>,
    at: &str,
    strict: bool,
    errs: &mut Vec<String>,
) {
    for req in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if !map.contains_key(req.as_str().unwrap()) {
            errs.push(format!("{at}: missing required field {req}"));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let open = schema.get("additionalProperties") == Some(&Value::Bool(true));
    for (k, val) in map {
        match props.and_then(|p| p.get(k)) {
            Some(s) => validate(doc, s, val, &format!("{at}.{k}"), errs),
            None if strict && props.is_some() && !open => {
                errs.push(format!("{at}: undocumented field {k:?}"));
            }
            None => {}
        }
    }
}

/// The document plus checks of real exchanges against it.
struct Spec {
    doc: Value,
}

impl Spec {
    async fn load(app: &TestApp) -> Self {
        Spec {
            doc: fetch_doc(app).await,
        }
    }

    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => resolve(&self.doc, r).unwrap(),
            None => v,
        }
    }

    fn op(&self, method: &str, template: &str) -> &Value {
        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        op
    }

    fn assert_valid(&self, schema: &Value, v: &Value, what: &str) {
        let mut errs = Vec::new();
        validate(&self.doc, schema, v, "$", &mut errs);
        assert!(
            errs.is_empty(),
            "{what} does not match the document:\n{errs:#?}\n{v:#}"
        );
    }

    /// A JSON request body the handler accepted must be valid per the document too.
    fn check_request(&self, method: &str, template: &str, body: &Value) {
        let schema =
            &self.op(method, template)["requestBody"]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template}: no JSON request body"
        );
        self.assert_valid(
            schema,
            body,
            &format!("request body of {method} {template}"),
        );
    }

    /// Assert `resp` has status `expected`, that the document lists that status for the
    /// operation, and that content type, documented headers and JSON body conform.
    #[track_caller]
    fn check(&self, method: &str, template: &str, resp: &Resp, expected: u16) -> Value {
        assert_eq!(
            resp.status.as_u16(),
            expected,
            "{method} {template}: unexpected status; body: {}",
            resp.text()
        );
        check_exchange(
            self,
            method,
            template,
            resp.status,
            &resp.headers,
            &resp.body,
        )
    }
}

fn check_exchange(
    spec: &Spec,
    method: &str,
    template: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Value {
    let what = format!("{method} {template} -> {}", status.as_u16());
    let responses = &spec.op(method, template)["responses"];
    let documented = responses
        .get(status.as_str())
        .unwrap_or_else(|| panic!("{what}: status not documented"));
    let documented = spec.deref(documented);
    for (name, _) in documented
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        assert!(
            headers.contains_key(name.as_str()),
            "{what}: no {name} header"
        );
    }
    let Some(content) = documented.get("content").and_then(Value::as_object) else {
        assert!(body.is_empty(), "{what}: documented without a body");
        return Value::Null;
    };
    let media = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_else(|| panic!("{what}: no Content-Type"));
    let entry = content
        .get(media)
        .unwrap_or_else(|| panic!("{what}: content type {media} not documented"));
    if media != "application/json" {
        return Value::Null;
    }
    let v: Value = serde_json::from_slice(body).unwrap();
    spec.assert_valid(&entry["schema"], &v, &format!("response {what}"));
    v
}

fn with_headers(
    method: Method,
    path: &str,
    token: Option<&str>,
    hs: &[(&str, &str)],
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in hs {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn document_is_served_as_openapi_3() {
    let app = TestApp::new();
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    // Exactly the document generated from the handlers' `#[utoipa::path]`s.
    assert_eq!(r.text(), kernex_server::openapi::DOCUMENT.as_str());
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["servers"], json!([{"url": "/"}]));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
}

#[tokio::test]
async fn document_has_exactly_the_routes_of_the_router() {
    let app = TestApp::new();
    let doc = fetch_doc(&app).await;
    let documented = operations(&doc);
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(expected.len(), ROUTES.len(), "ROUTES has duplicates");
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "undocumented routes: {missing:?}; documented but not routed: {extra:?}"
    );

    // Every operation: a unique operationId, a summary, a known tag, the right security.
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let mut ids = BTreeSet::new();
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        let id = op["operationId"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
        assert!(op["summary"].is_string(), "{method} {path}: no summary");
        for t in op["tags"].as_array().unwrap() {
            assert!(
                tags.contains(t.as_str().unwrap()),
                "{method} {path}: tag {t}"
            );
        }
        let open = UNAUTHENTICATED.contains(&(method.as_str(), path.as_str()));
        let security = op.get("security").unwrap_or(&doc["security"]);
        if open {
            // `[{}]`: the empty requirement, met without credentials.
            assert!(
                security == &json!([]) || security == &json!([{}]),
                "{method} {path} must not need a token: {security}"
            );
        } else {
            assert_eq!(
                security,
                &json!([{"bearerAuth": []}]),
                "{method} {path} needs bearerAuth"
            );
        }
        // Path parameters are declared exactly as the template names them.
        let mut declared = BTreeSet::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            let p = match p.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(&doc, r).unwrap(),
                None => p,
            };
            if p["in"] == "path" {
                assert_eq!(p["required"], true);
                declared.insert(p["name"].as_str().unwrap().to_owned());
            }
        }
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, in_template, "{method} {path}: path parameters");
        // Every error response is an ErrorBody.
        for (code, resp) in op["responses"].as_object().unwrap() {
            if code.starts_with('4') || code.starts_with('5') {
                let resp = match resp.get("$ref").and_then(Value::as_str) {
                    Some(r) => resolve(&doc, r).unwrap(),
                    None => resp,
                };
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {code}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = TestApp::new();
    let doc = fetch_doc(&app).await;

    // The criterion itself: an unknown path gets the generic 404, a wrong method 405.
    let r = app.get("/api/v1/no-such-thing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json(), generic_not_found());
    let r = app.call(Method::PUT, "/healthz", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    for (method, path) in operations(&doc) {
        let uri = concrete(&path);
        let req = with_headers(
            Method::from_bytes(method.as_bytes()).unwrap(),
            &uri,
            Some(ADMIN),
            &[],
        );
        // Not read whole: `/events` never ends.
        let resp = app.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri} is not routed"
        );
        if status == StatusCode::NOT_FOUND {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_ne!(v, generic_not_found(), "{method} {uri} is not routed");
        }
    }
}

#[tokio::test]
async fn every_ref_resolves() {
    let app = TestApp::new();
    let doc = fetch_doc(&app).await;
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50, "suspiciously few $refs: {}", refs.len());
    for r in &refs {
        assert!(r.starts_with("#/components/"), "non-local $ref {r}");
        assert!(resolve(&doc, r).is_some(), "unresolvable $ref {r}");
    }
    // Every discriminator mapping names a schema too.
    let mut stack = vec![&doc];
    while let Some(v) = stack.pop() {
        if let Some(mapping) = v
            .pointer("/discriminator/mapping")
            .and_then(Value::as_object)
        {
            for target in mapping.values() {
                assert!(
                    resolve(&doc, target.as_str().unwrap()).is_some(),
                    "{target}"
                );
            }
        }
        match v {
            Value::Object(m) => stack.extend(m.values()),
            Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn key_statuses_are_documented() {
    let app = TestApp::new();
    let doc = fetch_doc(&app).await;
    for (method, path, codes) in KEY_STATUSES {
        let responses = &doc["paths"][*path][method.to_lowercase()]["responses"];
        for code in *codes {
            assert!(
                responses.get(*code).is_some(),
                "{method} {path}: {code} is not documented"
            );
        }
    }
}

/// Drive every operation for real (successes and the typical failures) and check each
/// exchange against the document.
#[tokio::test]
async fn real_responses_conform_to_the_document() {
    let app = TestApp::new();
    let spec = Spec::load(&app).await;
    let get = "GET";
    let post = "POST";

    // ---- probes
    let r = app.call(Method::GET, "/healthz", None, None).await;
    spec.check(get, "/healthz", &r, 200);
    let r = app.call(Method::GET, "/metrics", None, None).await;
    spec.check(get, "/metrics", &r, 200);
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    spec.check(get, "/api/v1/openapi.json", &r, 200);

    // ---- registration
    let reg = "/api/v1/devices/register";
    let key = new_key();
    let body = registration_body(&key, chrono::Utc::now());
    spec.check_request(post, reg, &serde_json::from_slice(&body).unwrap());
    let sig = key.sign(&body);
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    let v = spec.check(post, reg, &r, 201);
    assert_eq!(v["admission"], "accepted");
    let dev = Device {
        id: v["device_id"].as_str().unwrap().to_owned(),
        token: v["device_token"].as_str().unwrap().to_owned(),
        key,
    };
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    spec.check(post, reg, &r, 401); // replay
    let r = app.register_key(&dev.key, Some(ENROLL)).await;
    let v = spec.check(post, reg, &r, 200);
    let dev = Device {
        token: v["device_token"].as_str().unwrap().to_owned(),
        ..dev
    };
    let r = app.register_key(&new_key(), Some("wrong")).await;
    spec.check(post, reg, &r, 401);
    let r = app.register_raw(b"{not json", Some("AAAA"), None).await;
    spec.check(post, reg, &r, 400);
    let other = new_key();
    let r = app
        .register_raw(
            &registration_body(&other, chrono::Utc::now()),
            Some("AAAA"),
            None,
        )
        .await;
    spec.check(post, reg, &r, 401);
    let r = app
        .register_raw(&vec![b' '; 2 * 1024 * 1024], None, None)
        .await;
    spec.check(post, reg, &r, 413);
    let pending = app.pending_device().await;
    let doomed = app.device().await;

    // ---- devices
    let one = "/api/v1/devices/{device_id}";
    let dpath = format!("/api/v1/devices/{}", dev.id);
    let r = app.get("/api/v1/devices").await;
    let v = spec.check(get, "/api/v1/devices", &r, 200);
    assert_eq!(v.as_array().unwrap().len(), 3);
    let r = app
        .get("/api/v1/devices?limit=2&status=never&admission=accepted")
        .await;
    spec.check(get, "/api/v1/devices", &r, 200);
    let r = app.get("/api/v1/devices?limit=0").await;
    spec.check(get, "/api/v1/devices", &r, 400);
    let r = app.get("/api/v1/devices?status=asleep").await;
    spec.check(get, "/api/v1/devices", &r, 400);
    let r = app.call(Method::GET, "/api/v1/devices", None, None).await;
    spec.check(get, "/api/v1/devices", &r, 401);
    let r = app
        .call(Method::GET, "/api/v1/devices", Some(&dev.token), None)
        .await;
    spec.check(get, "/api/v1/devices", &r, 403);
    let r = app.get(&dpath).await;
    spec.check(get, one, &r, 200);
    let r = app.get("/api/v1/devices/nope").await;
    spec.check(get, one, &r, 404);
    let r = app.call(Method::GET, &dpath, Some(&dev.token), None).await;
    spec.check(get, one, &r, 403);
    let tags = json!({"tags": ["site:berlin", "canary"]});
    spec.check_request("PATCH", one, &tags);
    let r = app.patch(&dpath, tags).await;
    spec.check("PATCH", one, &r, 200);
    let r = app.patch(&dpath, json!({"tags": ["no spaces"]})).await;
    spec.check("PATCH", one, &r, 400);
    let r = app
        .patch(&dpath, json!({"tags": ["x".repeat(1024 * 1024 + 1)]}))
        .await;
    spec.check("PATCH", one, &r, 413);
    let accept = "/api/v1/devices/{device_id}/accept";
    let r = app
        .post(&format!("/api/v1/devices/{}/accept", pending.id), json!({}))
        .await;
    spec.check(post, accept, &r, 200);
    let r = app.post("/api/v1/devices/nope/accept", json!({})).await;
    spec.check(post, accept, &r, 404);
    let reject = "/api/v1/devices/{device_id}/reject";
    let r = app
        .post(&format!("/api/v1/devices/{}/reject", doomed.id), json!({}))
        .await;
    spec.check(post, reject, &r, 200);
    let r = app.register_key(&doomed.key, Some(ENROLL)).await;
    spec.check(post, reg, &r, 403);

    // ---- heartbeats
    let hb = "/api/v1/devices/{device_id}/heartbeat";
    let r = app.heartbeat(&dev, None, None).await;
    let v = spec.check(post, hb, &r, 200);
    assert_eq!(v["commands"][0]["type"], "configure");
    spec.check_request(
        post,
        hb,
        &json!({"agent_version": "0.1.0", "cpu_pct": 12.5, "memory_mb": 812.0,
                "status": "idle", "current_bundle_version": null, "config_version": null,
                "queued_reports": 0}),
    );
    let r = app
        .call(
            Method::POST,
            &format!("{dpath}/heartbeat"),
            Some(&dev.token),
            Some(json!({"agent_version": "1", "cpu_pct": -1, "memory_mb": 1, "status": "x"})),
        )
        .await;
    spec.check(post, hb, &r, 400);
    let r = app.post(&format!("{dpath}/heartbeat"), json!({})).await;
    spec.check(post, hb, &r, 403);
    let r = app
        .call(
            Method::POST,
            "/api/v1/devices/nope/heartbeat",
            Some(&dev.token),
            Some(json!({"agent_version": "1", "cpu_pct": 1, "memory_mb": 1, "status": "x"})),
        )
        .await;
    spec.check(post, hb, &r, 404);
    let r = app.get("/api/v1/devices?tag=canary").await;
    let listed = spec.check(get, "/api/v1/devices", &r, 200);
    assert_eq!(listed[0]["agent_status"], "idle");
    let dev_id = listed[0]["device_id"].as_str().unwrap().to_owned();
    assert_eq!(dev_id, dpath.rsplit('/').next().unwrap());
    let hbs = "/api/v1/devices/{device_id}/heartbeats";
    let r = app.get(&format!("{dpath}/heartbeats?limit=5")).await;
    let v = spec.check(get, hbs, &r, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let r = app.get(&format!("{dpath}/heartbeats?limit=1001")).await;
    spec.check(get, hbs, &r, 400);

    // ---- config
    let cfg = "/api/v1/devices/{device_id}/config";
    let r = app.get(&format!("{dpath}/config")).await;
    let v = spec.check(get, cfg, &r, 200);
    assert!(v["updated_at"].is_null());
    let update = json!({"polling_interval": 120, "log_level": "debug", "metadata": {"a": 1}});
    spec.check_request("PUT", cfg, &update);
    let r = app.put(&format!("{dpath}/config"), update).await;
    spec.check("PUT", cfg, &r, 200);
    let r = app
        .put(&format!("{dpath}/config"), json!({"polling_interval": 1}))
        .await;
    spec.check("PUT", cfg, &r, 400);
    let r = app.put("/api/v1/devices/nope/config", json!({})).await;
    spec.check("PUT", cfg, &r, 404);
    let r = app
        .put(
            &format!("{dpath}/config"),
            json!({"metadata": {"x": "y".repeat(1024 * 1024)}}),
        )
        .await;
    spec.check("PUT", cfg, &r, 413);

    // ---- bundles
    let bundles = "/api/v1/bundles";
    let r = app.upload(&bundle_bytes("app", "1.0.0"), None).await;
    let b1 = spec.check(post, bundles, &r, 201);
    let r = app.upload(&bundle_bytes("app", "1.0.0"), None).await;
    spec.check(post, bundles, &r, 409);
    let r = app.upload(b"definitely not a tarball", None).await;
    spec.check(post, bundles, &r, 400);
    let r = app
        .upload(
            &bundle_bytes("app", "1.5.0"),
            Some(r#"{"name":"app","version":"9"}"#),
        )
        .await;
    spec.check(post, bundles, &r, 400);
    let r = app.upload(&bundle_bytes("app", "2.0.0"), None).await;
    let b2 = spec.check(post, bundles, &r, 201);
    let small = TestApp::with(|s| s.max_bundle_size = 64);
    let r = small.upload(&noise(4096, 7), None).await;
    spec.check(post, bundles, &r, 413);
    let r = app.get(bundles).await;
    let v = spec.check(get, bundles, &r, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let info = "/api/v1/bundles/{bundle_id}/info";
    let b1_id = b1["id"].as_str().unwrap();
    let r = app.get(&format!("/api/v1/bundles/{b1_id}/info")).await;
    spec.check(get, info, &r, 200);
    let r = app.get("/api/v1/bundles/nope/info").await;
    spec.check(get, info, &r, 404);

    let dl = "/api/v1/bundles/{bundle_id}";
    let b1_path = format!("/api/v1/bundles/{b1_id}");
    let r = app
        .send(with_headers(Method::GET, &b1_path, Some(ADMIN), &[]))
        .await;
    spec.check(get, dl, &r, 200);
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    let r = app
        .send(with_headers(
            Method::GET,
            &b1_path,
            Some(ADMIN),
            &[("range", "bytes=0-9")],
        ))
        .await;
    spec.check(get, dl, &r, 206);
    assert_eq!(r.body.len(), 10);
    let r = app
        .send(with_headers(
            Method::GET,
            &b1_path,
            Some(ADMIN),
            &[("if-none-match", &etag)],
        ))
        .await;
    spec.check(get, dl, &r, 304);
    let r = app
        .send(with_headers(
            Method::GET,
            &b1_path,
            Some(ADMIN),
            &[("range", "bytes=99999999-")],
        ))
        .await;
    spec.check(get, dl, &r, 416);
    let r = app
        .send(with_headers(
            Method::GET,
            "/api/v1/bundles/nope",
            Some(ADMIN),
            &[],
        ))
        .await;
    spec.check(get, dl, &r, 404);
    let r = app
        .send(with_headers(Method::GET, &b1_path, None, &[]))
        .await;
    spec.check(get, dl, &r, 401);
    let r = app
        .send(with_headers(
            Method::GET,
            &b1_path,
            Some(&pending.token),
            &[],
        ))
        .await;
    spec.check(get, dl, &r, 403);

    // ---- deployments
    let deps = "/api/v1/deployments";
    let create = json!({"bundle_version": "1.0.0", "target_device_ids": [dev_id]});
    spec.check_request(post, deps, &create);
    let r = app.post(deps, create).await;
    let dep = spec.check(post, deps, &r, 201);
    let dep_id = dep["id"].as_str().unwrap().to_owned();
    // The document requires a non-null bundle_version or bundle_id, as the handler does.
    let neither = json!({"bundle_version": null, "target_device_ids": [dev_id]});
    let mut errs = Vec::new();
    let create_schema =
        &spec.op(post, deps)["requestBody"]["content"]["application/json"]["schema"];
    validate(&spec.doc, create_schema, &neither, "$", &mut errs);
    assert!(
        !errs.is_empty(),
        "a body without a bundle must be invalid per the document"
    );
    let r = app.post(deps, neither).await;
    spec.check(post, deps, &r, 400);
    let r = app
        .post(
            deps,
            json!({"bundle_version": "7.7.7", "target_device_ids": [dev_id]}),
        )
        .await;
    spec.check(post, deps, &r, 400);
    let r = app
        .post(
            deps,
            json!({"bundle_id": b1_id, "target_tags": ["nobody-has-this"]}),
        )
        .await;
    spec.check(post, deps, &r, 400);
    let r = app.get("/api/v1/deployments?status=pending&limit=10").await;
    let v = spec.check(get, deps, &r, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let r = app.get("/api/v1/deployments?status=sleeping").await;
    spec.check(get, deps, &r, 400);
    let one_dep = "/api/v1/deployments/{deployment_id}";
    let r = app.get(&format!("{deps}/{dep_id}")).await;
    spec.check(get, one_dep, &r, 200);
    let r = app.get(&format!("{deps}/nope")).await;
    spec.check(get, one_dep, &r, 404);

    let r = app.heartbeat(&dev, None, Some(2)).await;
    let v = spec.check(post, hb, &r, 200);
    assert_eq!(v["commands"][0]["type"], "deploy");
    let r = app
        .send(with_headers(Method::GET, &b1_path, Some(&dev.token), &[]))
        .await;
    spec.check(get, dl, &r, 200);

    let progress = "/api/v1/deployments/{deployment_id}/progress";
    let p = json!({"device_id": dev.id, "phase": "downloading", "progress_pct": 50});
    spec.check_request(post, progress, &p);
    let r = app
        .call(
            Method::POST,
            &format!("{deps}/{dep_id}/progress"),
            Some(&dev.token),
            Some(p.clone()),
        )
        .await;
    spec.check(post, progress, &r, 204);
    let r = app
        .call(
            Method::POST,
            &format!("{deps}/{dep_id}/progress"),
            Some(&dev.token),
            Some(json!({"device_id": dev.id, "phase": "downloading", "progress_pct": 101})),
        )
        .await;
    spec.check(post, progress, &r, 400);
    let r = app
        .post(&format!("{deps}/{dep_id}/progress"), p.clone())
        .await;
    spec.check(post, progress, &r, 403);
    let r = app
        .call(
            Method::POST,
            &format!("{deps}/nope/progress"),
            Some(&dev.token),
            Some(p),
        )
        .await;
    spec.check(post, progress, &r, 404);
    let r = app.get(&format!("{deps}/{dep_id}")).await;
    let v = spec.check(get, one_dep, &r, 200);
    assert_eq!(v["devices"][0]["phase"], "downloading");

    let result = "/api/v1/deployments/{deployment_id}/result";
    let rep = json!({"device_id": dev.id, "status": "success", "report_id": "r-1",
                     "error_message": null, "duration_seconds": 4.2, "log_tail": "ok\n",
                     "rolled_back_to": null});
    spec.check_request(post, result, &rep);
    let r = app
        .result(
            &dev,
            &dep_id,
            json!({"device_id": dev.id, "status": "meh", "report_id": "r-0"}),
        )
        .await;
    spec.check(post, result, &r, 400);
    let r = app.result(&dev, &dep_id, rep.clone()).await;
    spec.check(post, result, &r, 200);
    let r = app.result(&dev, &dep_id, rep.clone()).await;
    spec.check(post, result, &r, 200);
    let r = app.result(&dev, "nope", rep.clone()).await;
    spec.check(post, result, &r, 404);
    let r = app.result(&pending, &dep_id, rep).await;
    spec.check(post, result, &r, 403);

    let hist = "/api/v1/devices/{device_id}/bundle-history";
    let r = app.get(&format!("{dpath}/bundle-history?limit=5")).await;
    let v = spec.check(get, hist, &r, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let r = app
        .call(
            Method::GET,
            &format!("{dpath}/bundle-history"),
            Some(&dev.token),
            None,
        )
        .await;
    spec.check(get, hist, &r, 200);
    let r = app.get(&format!("{dpath}/bundle-history?limit=101")).await;
    spec.check(get, hist, &r, 400);

    // A second deployment holds bundle 2.0.0: deleting it is a conflict until cancelled.
    let r = app
        .post(
            deps,
            json!({"bundle_id": b2["id"], "target_tags": ["canary"]}),
        )
        .await;
    let dep2 = spec.check(post, deps, &r, 201);
    let dep2_id = dep2["id"].as_str().unwrap();
    let b2_path = format!("/api/v1/bundles/{}", b2["id"].as_str().unwrap());
    let r = app.delete(&b2_path).await;
    spec.check("DELETE", dl, &r, 409);
    let cancel = "/api/v1/deployments/{deployment_id}/cancel";
    let r = app
        .post(&format!("{deps}/{dep2_id}/cancel"), json!({}))
        .await;
    let v = spec.check(post, cancel, &r, 200);
    assert_eq!(v["status"], "cancelled");
    let r = app.post(&format!("{deps}/nope/cancel"), json!({})).await;
    spec.check(post, cancel, &r, 404);

    // A rollout (SPEC §6): created with a policy, paused, resumed, cancelled; a second
    // pause or resume is a conflict; a bad policy is a 400.
    let body = json!({"bundle_id": b2["id"], "target_tags": ["canary"],
        "rollout": {"waves": [50, 100], "soak_seconds": 60, "max_failures": 1,
                    "on_failure": "pause", "target_timeout_seconds": 3600}});
    spec.check_request(post, deps, &body);
    let r = app.post(deps, body).await;
    let dep3 = spec.check(post, deps, &r, 201);
    assert_eq!(dep3["rollout"]["waves"][0]["pct"], 50);
    let dep3_id = dep3["id"].as_str().unwrap();
    let r = app
        .post(
            deps,
            json!({"bundle_id": b2["id"], "target_tags": ["canary"],
            "rollout": {"waves": [50, 40]}}),
        )
        .await;
    spec.check(post, deps, &r, 400);
    let (pause, resume) = (
        "/api/v1/deployments/{deployment_id}/pause",
        "/api/v1/deployments/{deployment_id}/resume",
    );
    let r = app
        .post(&format!("{deps}/{dep3_id}/resume"), json!({}))
        .await;
    spec.check(post, resume, &r, 409);
    let r = app
        .post(&format!("{deps}/{dep3_id}/pause"), json!({}))
        .await;
    assert_eq!(spec.check(post, pause, &r, 200)["status"], "paused");
    let r = app
        .post(&format!("{deps}/{dep3_id}/pause"), json!({}))
        .await;
    spec.check(post, pause, &r, 409);
    let r = app
        .post(&format!("{deps}/{dep3_id}/resume"), json!({}))
        .await;
    spec.check(post, resume, &r, 200);
    let r = app.post(&format!("{deps}/nope/pause"), json!({})).await;
    spec.check(post, pause, &r, 404);
    let r = app.post(&format!("{deps}/nope/resume"), json!({})).await;
    spec.check(post, resume, &r, 404);
    let r = app
        .post(&format!("{deps}/{dep3_id}/cancel"), json!({}))
        .await;
    spec.check(post, cancel, &r, 200);
    let r = app.delete(&b2_path).await;
    spec.check("DELETE", dl, &r, 204);
    let r = app.delete(&b2_path).await;
    spec.check("DELETE", dl, &r, 404);

    // ---- rollback
    let rb = "/api/v1/devices/rollback";
    let body = json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id]});
    spec.check_request(post, rb, &body);
    let r = app.post(rb, body).await;
    let v = spec.check(post, rb, &r, 201);
    assert_eq!(v["kind"], "rollback");
    let r = app
        .post(
            rb,
            json!({"bundle_version": "9.9.9", "target_device_ids": [dev.id]}),
        )
        .await;
    spec.check(post, rb, &r, 400);
    let r = app.heartbeat(&dev, Some("1.0.0"), Some(2)).await;
    let v = spec.check(post, hb, &r, 200);
    assert_eq!(v["commands"][0]["type"], "rollback");

    // ---- events (never read whole: the stream does not end)
    let resp = app
        .router
        .clone()
        .oneshot(with_headers(
            Method::GET,
            "/api/v1/events",
            Some(ADMIN),
            &[],
        ))
        .await
        .unwrap();
    check_exchange(
        &spec,
        get,
        "/api/v1/events",
        resp.status(),
        resp.headers(),
        &[],
    );
    assert_eq!(resp.status(), StatusCode::OK);
    let r = app
        .call(Method::GET, "/api/v1/events", Some(&dev.token), None)
        .await;
    spec.check(get, "/api/v1/events", &r, 403);

    // ---- tokens
    let tokens = "/api/v1/tokens";
    let body = json!({"name": "ci-bot"});
    spec.check_request(post, tokens, &body);
    let r = app.post(tokens, body.clone()).await;
    spec.check(post, tokens, &r, 201);
    let r = app.post(tokens, body).await;
    spec.check(post, tokens, &r, 409);
    let r = app.post(tokens, json!({"name": "no spaces"})).await;
    spec.check(post, tokens, &r, 400);
    let r = app.get(tokens).await;
    let v = spec.check(get, tokens, &r, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let r = app.delete("/api/v1/tokens/ci-bot").await;
    spec.check("DELETE", "/api/v1/tokens/{name}", &r, 204);
    let r = app.delete("/api/v1/tokens/ci-bot").await;
    spec.check("DELETE", "/api/v1/tokens/{name}", &r, 404);

    // ---- backup
    let backup = "/api/v1/backup";
    let r = app.get(backup).await;
    spec.check(get, backup, &r, 200);
    assert!(
        r.body.len() > 1024 && r.body.len() % 512 == 0,
        "a whole tar stream"
    );
    let r = app.call(Method::GET, backup, None, None).await;
    spec.check(get, backup, &r, 401);
    let r = app.call(Method::GET, backup, Some(&dev.token), None).await;
    spec.check(get, backup, &r, 403);

    // ---- device deletion
    let r = app.delete(&format!("/api/v1/devices/{}", pending.id)).await;
    spec.check("DELETE", one, &r, 204);
    let r = app.delete(&format!("/api/v1/devices/{}", pending.id)).await;
    spec.check("DELETE", one, &r, 404);
}

/// The signed-update operations (SPEC §7) exchanged for real and checked against the
/// document, including a heartbeat reply that carries a signed deploy command and a
/// `trust` command.
#[tokio::test]
async fn signing_responses_conform_to_the_document() {
    use kernex_common::update_signing::{BundleMetadata, SecretKey, SignedDocument, TrustMetadata};
    use sha2::{Digest, Sha256};
    let app = TestApp::new();
    let spec = Spec::load(&app).await;
    let key = SecretKey::generate();
    let archive = bundle_bytes("app", "1.0.0");
    let id = app.upload(&archive, None).await.expect(StatusCode::CREATED)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sigs = "/api/v1/bundles/{bundle_id}/signatures";
    let path = format!("/api/v1/bundles/{id}/signatures");
    spec.check("GET", sigs, &app.get(&path).await, 404);
    let meta = BundleMetadata {
        bundle_version: "1.0.0".into(),
        sha256: hex::encode(Sha256::digest(&archive)),
        size_bytes: archive.len() as u64,
        device_types: vec!["gateway".into()],
        expires: chrono::Utc::now() + chrono::Duration::days(1),
        allow_downgrade: false,
    };
    let doc = serde_json::to_value(SignedDocument::sign_new(&meta, &key).unwrap()).unwrap();
    spec.check_request("POST", sigs, &doc);
    spec.check("POST", sigs, &app.post(&path, doc.clone()).await, 200);
    spec.check("GET", sigs, &app.get(&path).await, 200);
    let wrong = BundleMetadata {
        size_bytes: 1,
        ..meta.clone()
    };
    let wrong = serde_json::to_value(SignedDocument::sign_new(&wrong, &key).unwrap()).unwrap();
    spec.check("POST", sigs, &app.post(&path, wrong).await, 400);
    let other = BundleMetadata {
        device_types: vec![],
        ..meta
    };
    let other = serde_json::to_value(SignedDocument::sign_new(&other, &key).unwrap()).unwrap();
    spec.check("POST", sigs, &app.post(&path, other).await, 409);
    let r = app.post("/api/v1/bundles/nope/signatures", doc).await;
    spec.check("POST", sigs, &r, 404);

    let trust = "/api/v1/trust";
    spec.check("GET", trust, &app.get(trust).await, 404);
    let tm = TrustMetadata {
        keys: vec![key.public().to_string()],
        threshold: 1,
        version: 1,
        expires: chrono::Utc::now() + chrono::Duration::days(1),
    };
    let tdoc = serde_json::to_value(SignedDocument::sign_new(&tm, &key).unwrap()).unwrap();
    spec.check_request("PUT", trust, &tdoc);
    spec.check("PUT", trust, &app.put(trust, tdoc.clone()).await, 200);
    spec.check("PUT", trust, &app.put(trust, tdoc).await, 409);
    spec.check(
        "PUT",
        trust,
        &app.put(trust, json!({"metadata": 1})).await,
        400,
    );
    spec.check("GET", trust, &app.get(trust).await, 200);

    let dev = app.device().await;
    app.deploy("1.0.0", &[&dev]).await;
    let beat = "/api/v1/devices/{device_id}/heartbeat";
    let body = json!({"agent_version": "0.1.0", "cpu_pct": 1.0, "memory_mb": 1.0,
        "status": "idle", "trust_version": 0});
    spec.check_request("POST", beat, &body);
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/devices/{}/heartbeat", dev.id),
            Some(&dev.token),
            Some(body),
        )
        .await;
    let v = spec.check("POST", beat, &r, 200);
    let types: Vec<_> = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].clone())
        .collect();
    assert_eq!(
        types,
        vec![json!("deploy"), json!("configure"), json!("trust")],
        "{v}"
    );
    assert!(v["commands"][0]["signed"]["signatures"].is_array());
}

/// Issue 14's two drifts between the document and the routes, driven for real: a
/// `report_id` reused on another deployment is a documented 400 that changes nothing,
/// and a token revoking itself is a documented 409 unless `?self=true` confirms it.
#[tokio::test]
async fn report_id_reuse_and_token_self_revocation_are_documented() {
    let app = TestApp::new();
    let spec = Spec::load(&app).await;
    let result = "/api/v1/deployments/{deployment_id}/result";
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    app.bundle("2.0.0").await;
    let first = app.deploy("1.0.0", &[&dev]).await;
    let first = first["id"].as_str().unwrap().to_owned();
    let rep = json!({"device_id": dev.id, "status": "success", "report_id": "reused-1"});
    let r = app.result(&dev, &first, rep.clone()).await;
    spec.check("POST", result, &r, 200);
    let second = app.deploy("2.0.0", &[&dev]).await;
    let second = second["id"].as_str().unwrap().to_owned();
    let r = app.result(&dev, &second, rep).await;
    let v = spec.check("POST", result, &r, 400);
    assert_eq!(v["error"], "bad_request", "{v}");
    let d = app
        .get(&format!("/api/v1/deployments/{second}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["devices"][0]["status"], "pending", "nothing changed: {d}");

    let one = "/api/v1/tokens/{name}";
    let created = app
        .post("/api/v1/tokens", json!({"name": "ops"}))
        .await
        .expect(StatusCode::CREATED);
    let ops = created["token"].as_str().unwrap().to_owned();
    let r = app
        .call(Method::DELETE, "/api/v1/tokens/ops", Some(&ops), None)
        .await;
    let v = spec.check("DELETE", one, &r, 409);
    assert!(v["message"].as_str().unwrap().contains("self=true"), "{v}");
    let r = app
        .call(Method::GET, "/api/v1/tokens", Some(&ops), None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a refused self-revocation changes nothing"
    );
    let r = app
        .call(
            Method::DELETE,
            "/api/v1/tokens/ops?self=maybe",
            Some(&ops),
            None,
        )
        .await;
    spec.check("DELETE", one, &r, 400);
    let r = app
        .call(
            Method::DELETE,
            "/api/v1/tokens/ops?self=true",
            Some(&ops),
            None,
        )
        .await;
    spec.check("DELETE", one, &r, 204);
    let r = app
        .call(Method::GET, "/api/v1/tokens", Some(&ops), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the token is gone");
    let r = app
        .call(Method::DELETE, "/api/v1/tokens/admin", Some(&ops), None)
        .await;
    spec.check("DELETE", one, &r, 401);
    // Another operator's token needs no confirmation.
    app.post("/api/v1/tokens", json!({"name": "other"}))
        .await
        .expect(StatusCode::CREATED);
    let r = app.delete("/api/v1/tokens/other").await;
    spec.check("DELETE", one, &r, 204);
}
