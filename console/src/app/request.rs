//! Work the app asks for (`Request`) and what comes back (`Msg`). `update` never does
//! I/O: it queues requests, the run loop executes them on tasks, and their replies come
//! back as messages. Tests feed messages directly.

use kernex_common::api::{
    BundleInfo, ConfigUpdate, CreateDeployment, Deployment, DeviceConfig, DeviceDetail,
    DeviceSummary, HeartbeatRecord, HistoryRecord, RollbackRequest,
};

use crate::api::{Api, ApiError, DeviceQuery, MAX_PAGE};
use crate::live::LiveEvent;

/// Heartbeats drawn in the Device view's sparklines.
pub const SPARK_POINTS: u32 = 120;
/// Bundle-history records shown (and offered for rollback).
pub const HISTORY_LIMIT: u32 = 50;
/// Deployments kept in the Deployments view.
pub const DEPLOYMENTS_LIMIT: u32 = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// One page of the device list for full re-read number `generation`.
    DevicePage {
        generation: u64,
        after: Option<String>,
    },
    /// One device's row (a heartbeat from a device we have not read).
    Device(String),
    DeviceView(String),
    History(String),
    Config(String),
    Deployments,
    Deployment(String),
    Bundles,
    Deploy(CreateDeployment),
    Rollback(RollbackRequest),
    PutConfig(String, ConfigUpdate),
    Accept(String),
    Reject(String),
    Cancel(String),
    Pause(String),
    Resume(String),
}

/// Everything the Device view shows, read together.
#[derive(Debug, Clone)]
pub struct DeviceData {
    pub detail: DeviceDetail,
    pub heartbeats: Vec<HeartbeatRecord>,
    pub history: Vec<HistoryRecord>,
    pub config: DeviceConfig,
}

#[derive(Debug)]
pub enum Msg {
    Live(LiveEvent),
    DevicePage {
        generation: u64,
        page: Vec<DeviceSummary>,
        last: bool,
    },
    /// `None` when it could not be read (deleted meanwhile, or the server is away).
    Device(String, Option<Box<DeviceSummary>>),
    DeviceView(Box<DeviceData>),
    History(String, Vec<HistoryRecord>),
    Config(DeviceConfig),
    Deployments(Vec<Deployment>),
    Deployment(Box<Deployment>),
    Bundles(Vec<BundleInfo>),
    /// An operator action finished.
    Done(Result<Done, String>),
    /// A read failed (shown, not fatal).
    Failed {
        request: Request,
        error: String,
    },
}

/// A successful operator action.
#[derive(Debug)]
pub enum Done {
    /// A deploy or rollback the operator just created.
    Created(Box<Deployment>),
    /// A deployment the operator cancelled.
    Cancelled(Box<Deployment>),
    /// A rollout the operator paused or resumed.
    PausedOrResumed(Box<Deployment>),
    Config(DeviceConfig),
    Device(Box<DeviceDetail>),
}

impl Request {
    /// Execute against the server; the reply as a message.
    pub async fn execute(self, api: &Api) -> Msg {
        let what = self.describe();
        let request = self.clone();
        let failed = |e: ApiError| Msg::Failed {
            request,
            error: e.to_string(),
        };
        let op = |r: Result<Done, ApiError>| Msg::Done(r.map_err(|e| format!("{what}: {e}")));
        match self {
            Request::DevicePage { generation, after } => {
                let q = DeviceQuery {
                    limit: Some(MAX_PAGE),
                    after,
                    ..Default::default()
                };
                match api.devices(&q).await {
                    Ok(page) => Msg::DevicePage {
                        generation,
                        last: page.len() < MAX_PAGE as usize,
                        page,
                    },
                    Err(e) => failed(e),
                }
            }
            Request::Device(id) => {
                let row = api.device(&id).await.ok().map(|d| Box::new(d.summary));
                Msg::Device(id, row)
            }
            Request::DeviceView(id) => {
                let r = tokio::try_join!(
                    api.device(&id),
                    api.heartbeats(&id, SPARK_POINTS),
                    api.history(&id, HISTORY_LIMIT),
                    api.config(&id),
                );
                match r {
                    Ok((detail, heartbeats, history, config)) => {
                        Msg::DeviceView(Box::new(DeviceData {
                            detail,
                            heartbeats,
                            history,
                            config,
                        }))
                    }
                    Err(e) => failed(e),
                }
            }
            Request::History(id) => match api.history(&id, HISTORY_LIMIT).await {
                Ok(h) => Msg::History(id, h),
                Err(e) => failed(e),
            },
            Request::Config(id) => match api.config(&id).await {
                Ok(c) => Msg::Config(c),
                Err(e) => failed(e),
            },
            // Without targets: the shown deployment's are read in pages when it is shown.
            Request::Deployments => match api.deployments(None, DEPLOYMENTS_LIMIT, false).await {
                Ok(d) => Msg::Deployments(d),
                Err(e) => failed(e),
            },
            Request::Deployment(id) => match api.deployment(&id).await {
                Ok(d) => Msg::Deployment(Box::new(d)),
                Err(e) => failed(e),
            },
            Request::Bundles => match api.bundles().await {
                Ok(b) => Msg::Bundles(b),
                Err(e) => failed(e),
            },
            Request::Deploy(req) => op(api
                .create_deployment(&req)
                .await
                .map(|d| Done::Created(Box::new(d)))),
            Request::Rollback(req) => {
                op(api.rollback(&req).await.map(|d| Done::Created(Box::new(d))))
            }
            Request::PutConfig(id, update) => {
                op(api.put_config(&id, &update).await.map(Done::Config))
            }
            Request::Accept(id) => op(api.accept(&id).await.map(|d| Done::Device(Box::new(d)))),
            Request::Reject(id) => op(api.reject(&id).await.map(|d| Done::Device(Box::new(d)))),
            Request::Cancel(id) => op(api.cancel(&id).await.map(|d| Done::Cancelled(Box::new(d)))),
            Request::Pause(id) => op(api
                .pause(&id)
                .await
                .map(|d| Done::PausedOrResumed(Box::new(d)))),
            Request::Resume(id) => op(api
                .resume(&id)
                .await
                .map(|d| Done::PausedOrResumed(Box::new(d)))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Request::DevicePage { .. } => "reading devices".into(),
            Request::Device(id) | Request::DeviceView(id) => format!("reading device {id}"),
            Request::History(id) => format!("reading {id}'s history"),
            Request::Config(id) => format!("reading {id}'s config"),
            Request::Deployments => "reading deployments".into(),
            Request::Deployment(id) => format!("reading deployment {id}"),
            Request::Bundles => "reading bundles".into(),
            Request::Deploy(_) => "deploy".into(),
            Request::Rollback(_) => "rollback".into(),
            Request::PutConfig(id, _) => format!("config of {id}"),
            Request::Accept(id) => format!("accept {id}"),
            Request::Reject(id) => format!("reject {id}"),
            Request::Cancel(id) => format!("cancel {id}"),
            Request::Pause(id) => format!("pause {id}"),
            Request::Resume(id) => format!("resume {id}"),
        }
    }
}
