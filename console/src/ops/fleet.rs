//! `devices`, `device ID`, `accept ID`, `reject ID`.

use chrono::Utc;
use kernex_common::api::{Admission, DeviceConfig, DeviceDetail, HistoryRecord, OnlineStatus};
use serde::Serialize;

use super::{OpError, OpResult, Report, check_tag, connect, ids, output, render};
use crate::api::DeviceQuery;
use crate::cli::{ConnArgs, DevicesArgs};

/// Bundle-history records `device ID` shows.
const HISTORY: u32 = 5;

/// `devices`: every matching device, fetched page by page.
pub(crate) async fn devices(conn: &ConnArgs, args: &DevicesArgs) -> OpResult<Report> {
    let query = query(args)?;
    let list = connect(conn)?.all_devices(&query).await?;
    Ok(
        Report::new(&list, render::devices(&list, Utc::now(), output::width()))?
            .wide(render::devices_wide(&list, Utc::now()))
            .when_empty("no devices"),
    )
}

/// The filters, checked here so a typo is a usage error rather than a server's 400.
fn query(args: &DevicesArgs) -> OpResult<DeviceQuery> {
    if let Some(t) = args.tag.as_deref() {
        check_tag(t)?;
    }
    if let Some(s) = args
        .status
        .as_deref()
        .filter(|s| OnlineStatus::parse(s).is_none())
    {
        return Err(OpError::Usage(format!(
            "--status must be online, offline or never, got {s:?}"
        )));
    }
    if let Some(a) = args
        .admission
        .as_deref()
        .filter(|a| Admission::parse(a).is_none())
    {
        return Err(OpError::Usage(format!(
            "--admission must be pending, accepted or rejected, got {a:?}"
        )));
    }
    Ok(DeviceQuery {
        tag: args.tag.clone(),
        status: args.status.clone(),
        admission: args.admission.clone(),
        ..DeviceQuery::default()
    })
}

/// `device ID` with `--json`.
#[derive(Serialize)]
struct DevicePage {
    device: DeviceDetail,
    config: DeviceConfig,
    history: Vec<HistoryRecord>,
}

/// `device ID`: the device, its configuration and its last few bundle-history records.
pub(crate) async fn device(conn: &ConnArgs, id: &str) -> OpResult<Report> {
    ids::check_ref("device", id)?;
    let api = connect(conn)?;
    let id = &ids::device(&api, id).await?;
    let (device, config, history) =
        tokio::try_join!(api.device(id), api.config(id), api.history(id, HISTORY))?;
    let human = render::device_page(&device, &config, &history, Utc::now(), output::width());
    Report::new(
        &DevicePage {
            device,
            config,
            history,
        },
        human,
    )
}

/// `accept ID` / `reject ID`: the device as it is now.
pub(crate) async fn admit(conn: &ConnArgs, id: &str, accept: bool) -> OpResult<Report> {
    ids::check_ref("device", id)?;
    let api = connect(conn)?;
    let id = &ids::device(&api, id).await?;
    let device = if accept {
        api.accept(id).await?
    } else {
        api.reject(id).await?
    };
    Report::new(&device, render::device(&device, Utc::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tag: Option<&str>, status: Option<&str>, admission: Option<&str>) -> DevicesArgs {
        DevicesArgs {
            tag: tag.map(str::to_owned),
            status: status.map(str::to_owned),
            admission: admission.map(str::to_owned),
            out: Default::default(),
        }
    }

    #[test]
    fn filters_are_checked_locally() {
        let q = query(&args(Some("site:berlin"), Some("online"), Some("pending"))).unwrap();
        assert_eq!(q.tag.as_deref(), Some("site:berlin"));
        assert_eq!(q.status.as_deref(), Some("online"));
        assert_eq!(q.admission.as_deref(), Some("pending"));
        for bad in [
            args(Some("has space"), None, None),
            args(None, Some("up"), None),
            args(None, None, Some("maybe")),
        ] {
            assert_eq!(query(&bad).unwrap_err().exit_code(), 2);
        }
    }
}
