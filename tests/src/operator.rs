//! An operator's HTTP calls for end-to-end tests: one token, JSON in and out. The calls
//! that must succeed panic with the reply when they do not, so a test reads as the
//! operator's steps.
#![allow(clippy::unwrap_used)]

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct OperatorApi {
    pub http: reqwest::Client,
    /// The server's root URL (`http://127.0.0.1:PORT`).
    pub base: String,
    token: String,
}

impl OperatorApi {
    pub fn new(base: impl Into<String>, token: &str) -> Self {
        OperatorApi {
            http: crate::client(),
            base: base.into(),
            token: token.to_owned(),
        }
    }

    /// `method /api/v1{path}`: the status and the JSON reply (`Null` when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call that must succeed; its reply.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path} → {status}: {v}");
        v
    }

    pub async fn get(&self, path: &str) -> Value {
        self.ok(Method::GET, path, None).await
    }

    /// Upload a bundle archive (201); the bundle's info.
    pub async fn upload(&self, archive: Vec<u8>) -> Value {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(archive).file_name("bundle.tar.gz"),
        );
        let resp = self
            .http
            .post(format!("{}/api/v1/bundles", self.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "upload: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Create a deployment of `version` to `device`; its id.
    pub async fn deploy(&self, version: &str, device: &str) -> String {
        let body = json!({"bundle_version": version, "target_device_ids": [device]});
        let d = self.ok(Method::POST, "/deployments", Some(body)).await;
        d["id"].as_str().unwrap().to_owned()
    }

    /// This device's entry in a deployment.
    pub async fn target(&self, deployment: &str, device: &str) -> Value {
        let d = self.get(&format!("/deployments/{deployment}")).await;
        d["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["device_id"] == device)
            .cloned()
            .unwrap_or_else(|| panic!("{device} is not a target of {d}"))
    }
}
