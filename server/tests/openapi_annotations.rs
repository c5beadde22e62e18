//! Every route the router mounts has its `#[utoipa::path]`: read from the source of
//! `src/router.rs` and of the handlers, so a route added without documenting its handler
//! (or documented under another method or path, or left out of `ApiDoc`) fails here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use kernex_server::openapi::ApiDoc;
use utoipa::OpenApi;

const ROUTER: &str = include_str!("../src/router.rs");

/// The handler modules the router names, with their source.
const HANDLER_SOURCES: &[(&str, &str)] = &[
    ("backup", include_str!("../src/routes/backup.rs")),
    ("bundles", include_str!("../src/routes/bundles.rs")),
    ("config", include_str!("../src/routes/config.rs")),
    ("deployments", include_str!("../src/routes/deployments.rs")),
    ("devices", include_str!("../src/routes/devices.rs")),
    ("events", include_str!("../src/routes/events.rs")),
    ("health", include_str!("../src/routes/health.rs")),
    ("signing", include_str!("../src/routes/signing.rs")),
    ("tokens", include_str!("../src/routes/tokens.rs")),
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// A mounted route: (METHOD, full path, `module::handler`).
type Route = (String, String, String);

/// The text inside the parentheses that open at `open` (an index just past a `(`).
fn balanced(src: &str, open: usize) -> &str {
    let mut depth = 1;
    for (i, c) in src[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &src[open..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in router.rs")
}

/// Every `.route("PATH", get(m::f).post(m::g)...)` of a block of the router.
fn routes_in(block: &str, prefix: &str, out: &mut Vec<Route>) {
    let mut rest = block;
    while let Some(at) = rest.find(".route(") {
        let args = balanced(rest, at + ".route(".len());
        let path = args.split('"').nth(1).unwrap();
        for method in METHODS {
            let call = format!("{method}(");
            let mut from = 0;
            while let Some(i) = args[from..].find(&call) {
                let start = from + i;
                let before = args[..start].chars().last();
                from = start + call.len();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let handler = balanced(args, from).trim().to_owned();
                out.push((method.to_uppercase(), format!("{prefix}{path}"), handler));
            }
        }
        rest = &rest[at + ".route(".len() + args.len()..];
    }
}

/// What `src/router.rs` mounts: the API routes (nested under `/api/v1`) and the rest.
fn mounted() -> Vec<Route> {
    let (api, top) = ROUTER
        .split_once(".nest(\"/api/v1\", api)")
        .expect("router.rs nests the API under /api/v1");
    let mut out = Vec::new();
    routes_in(api, "/api/v1", &mut out);
    routes_in(top, "", &mut out);
    out
}

/// The `#[utoipa::path(...)]` right above `pub async fn NAME(` in `src`, if any.
fn annotation_of<'a>(src: &'a str, name: &str) -> Option<&'a str> {
    let fn_at = src.find(&format!("pub async fn {name}("))?;
    let head = &src[..fn_at];
    let attr_at = head.rfind("#[utoipa::path(")?;
    let attr = balanced(head, attr_at + "#[utoipa::path(".len());
    // Nothing but attributes and doc comments between the annotation and the fn.
    let between = &head[attr_at + "#[utoipa::path(".len() + attr.len()..];
    let clean = between.lines().skip(1).all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with("#[") || l.starts_with("//") || l.starts_with(')')
    });
    clean.then_some(attr)
}

#[test]
fn the_router_is_read_whole() {
    let routes = mounted();
    // Sanity of the reading itself: the router mounts dozens of routes, among them
    // ones chained on one path and the top-level probes.
    assert!(routes.len() >= 39, "only {} routes read", routes.len());
    for expected in [
        ("PATCH", "/api/v1/devices/{device_id}", "devices::patch"),
        ("DELETE", "/api/v1/tokens/{name}", "tokens::delete"),
        ("POST", "/api/v1/bundles", "bundles::upload"),
        ("GET", "/healthz", "health::healthz"),
    ] {
        assert!(
            routes
                .iter()
                .any(|(m, p, h)| (m.as_str(), p.as_str(), h.as_str()) == expected),
            "{expected:?} not read from router.rs"
        );
    }
}

#[test]
fn every_route_has_a_utoipa_path_on_its_handler() {
    let mut missing = Vec::new();
    for (method, path, handler) in mounted() {
        let (module, name) = handler.split_once("::").unwrap();
        let src = HANDLER_SOURCES
            .iter()
            .find(|(m, _)| *m == module)
            .unwrap_or_else(|| panic!("handler module {module} is not in HANDLER_SOURCES"))
            .1;
        let Some(attr) = annotation_of(src, name) else {
            missing.push(format!("{method} {path}: {handler} has no #[utoipa::path]"));
            continue;
        };
        let mut lines = attr.lines().map(str::trim).filter(|l| !l.is_empty());
        let said_method = lines.next().unwrap_or_default().trim_end_matches(',');
        let said_path = lines.next().unwrap_or_default();
        if said_method != method.to_lowercase() || said_path != format!("path = \"{path}\",") {
            missing.push(format!(
                "{method} {path}: {handler} documents {said_method} {said_path}"
            ));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn the_generated_document_has_exactly_the_mounted_routes() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routes = mounted();
    let routed: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    assert_eq!(routed.len(), routes.len(), "a route is mounted twice");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "mounted but not in ApiDoc: {undocumented:?}; in ApiDoc but not mounted: {unrouted:?}"
    );
}

/// The `Modify` steps of `ApiDoc` each found what they amend (they skip silently
/// otherwise, e.g. after a rename).
#[test]
fn the_document_amendments_took_effect() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let create = &schemas["CreateDeployment"]["allOf"];
    assert!(
        create[1]["anyOf"].as_array().is_some_and(|a| a.len() == 2),
        "CreateDeployment needs a bundle: {create}"
    );
    let codes: Vec<&str> = schemas["ErrorBody"]["properties"]["error"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(codes, kernex_server::error::ApiError::CODES);
    let form =
        &doc["paths"]["/api/v1/bundles"]["post"]["requestBody"]["content"]["multipart/form-data"];
    assert_eq!(
        form["encoding"]["file"]["contentType"],
        "application/gzip, application/octet-stream"
    );
}
