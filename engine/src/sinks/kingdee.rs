//! Kingdee K3 Cloud (金蝶云星空) WebAPI: log in with `AuthService.ValidateUser` (body
//! `{"format":1,"useragent":"ApiClient","rid":{},"parameters":[acctID,user,pwd,lcid],…}`,
//! success when `LoginResultType` ≠ 0) and keep the session cookie; then
//! `DynamicFormService.Save` with `{"formid":…,"data":{"Model":{…}}}` and, if configured,
//! `Submit` with `{"Numbers":[…]}`. A `ResponseStatus` with ErrorCode 500 and "会话信息已丢失"
//! means the session was lost: log in again and replay (yrzs/k3cloud `kernel/browser.go`).
//!
//! The bill comes from the rule's payload template, which must render `{"Model": {…}}` (a
//! sales order needs organisation, customer and material ids no order carries). Give the
//! bill a number derived from the order (`FBillNo`) so a retry of a save that went through is
//! refused as a duplicate, which counts as delivered [?: the "已存在" message is not verified].

use super::{Settings, SinkError, excerpt, send};
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};
use serde_json::Value;
use std::sync::Arc;

const LOGIN: &str = "Kingdee.BOS.WebApi.ServicesStub.AuthService.ValidateUser.common.kdsvc";
const SAVE: &str = "Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.Save.common.kdsvc";
const SUBMIT: &str = "Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.Submit.common.kdsvc";
const SESSION_LOST: &str = "会话信息已丢失";
const ALREADY_EXISTS: &str = "已存在";

struct Inner {
    client: reqwest::Client,
    host: String,
    login_body: Value,
    form_id: String,
    submit: bool,
    logged_in: tokio::sync::Mutex<bool>,
}

pub(crate) struct KingdeeConnector {
    inner: Arc<Inner>,
}

impl KingdeeConnector {
    /// `client` must keep cookies (the session lives in one).
    pub(crate) fn new(client: reqwest::Client, settings: &Settings<'_>) -> Result<Self, SinkError> {
        let mut host = settings.url().to_owned();
        if !host.ends_with('/') {
            host.push('/');
        }
        let lcid: i64 = settings
            .option("lcid")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2052);
        let login_body = serde_json::json!({
            "format": 1,
            "useragent": "ApiClient",
            "rid": {},
            "parameters": [
                settings.credential("acct_id")?,
                settings.credential("username")?,
                settings.credential("password")?,
                lcid,
            ],
            "v": "1.0",
        });
        Ok(KingdeeConnector {
            inner: Arc::new(Inner {
                client,
                host,
                login_body,
                form_id: settings
                    .option("form_id")
                    .unwrap_or("SAL_SaleOrder")
                    .to_owned(),
                submit: settings.option("submit") == Some("true"),
                logged_in: tokio::sync::Mutex::new(false),
            }),
        })
    }
}

/// What a Kingdee answer says.
#[derive(Debug, PartialEq)]
enum Answer {
    Saved { numbers: Vec<String> },
    SessionLost,
    Failed(String),
}

/// Finds `Result.ResponseStatus` in an answer (an object, or nested arrays of them).
fn status(value: &Value) -> Option<&Value> {
    match value {
        Value::Array(items) => items.iter().find_map(status),
        Value::Object(_) => value.get("Result").and_then(|r| r.get("ResponseStatus")),
        _ => None,
    }
}

fn read(body: &str) -> Answer {
    let value: Value = serde_json::from_str(body).unwrap_or_default();
    let Some(status) = status(&value) else {
        return Answer::Failed(format!("unexpected answer: {}", excerpt(body)));
    };
    if status["IsSuccess"].as_bool() == Some(true) {
        let numbers = status["SuccessEntitys"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| e["Number"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        return Answer::Saved { numbers };
    }
    let messages: Vec<String> = status["Errors"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["Message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if status["ErrorCode"].as_i64() == Some(500)
        && messages.iter().any(|m| m.contains(SESSION_LOST))
    {
        return Answer::SessionLost;
    }
    Answer::Failed(format!(
        "ErrorCode {}: {}",
        status["ErrorCode"],
        messages.join("; ")
    ))
}

impl Inner {
    async fn login(&self) -> Result<(), Delivery> {
        let mut body = self.login_body.clone();
        body["timestamp"] = Value::String(today());
        let text = send(
            self.client
                .post(format!("{}{LOGIN}", self.host))
                .json(&body),
        )
        .await?;
        let answer: Value = serde_json::from_str(&text).unwrap_or_default();
        match answer["LoginResultType"].as_i64() {
            Some(0) | None => Err(Delivery::Failed {
                retry_after: None,
                detail: format!("login refused: {}", answer["Message"]),
            }),
            Some(_) => Ok(()),
        }
    }

    async fn call(&self, path: &str, data: Value) -> Result<Answer, Delivery> {
        let body = serde_json::json!({ "formid": self.form_id, "data": data });
        let text = send(self.client.post(format!("{}{path}", self.host)).json(&body)).await?;
        Ok(read(&text))
    }

    /// Calls `path`, logging in first if needed and once more if the session was lost.
    async fn call_logged_in(&self, path: &str, data: Value) -> Result<Answer, Delivery> {
        let mut logged_in = self.logged_in.lock().await;
        if !*logged_in {
            self.login().await?;
            *logged_in = true;
        }
        drop(logged_in);
        match self.call(path, data.clone()).await? {
            Answer::SessionLost => {
                let mut logged_in = self.logged_in.lock().await;
                self.login().await?;
                *logged_in = true;
                drop(logged_in);
                self.call(path, data).await
            }
            answer => Ok(answer),
        }
    }

    async fn deliver(&self, sync: std::sync::Arc<SyncIntent>) -> Delivery {
        let Some(model) = sync.payload.get("Model") else {
            return Delivery::Rejected {
                detail:
                    "payload has no Model: give the rule a template that renders {\"Model\": {…}}"
                        .into(),
            };
        };
        let saved = match self
            .call_logged_in(SAVE, serde_json::json!({ "Model": model }))
            .await
        {
            Ok(answer) => answer,
            Err(delivery) => return delivery,
        };
        let numbers = match saved {
            Answer::Saved { numbers } => numbers,
            Answer::Failed(detail) if detail.contains(ALREADY_EXISTS) => {
                return Delivery::Delivered;
            }
            Answer::Failed(detail) => return Delivery::Rejected { detail },
            Answer::SessionLost => {
                return Delivery::Failed {
                    retry_after: None,
                    detail: "session lost again right after logging in".into(),
                };
            }
        };
        if !self.submit || numbers.is_empty() {
            return Delivery::Delivered;
        }
        match self
            .call_logged_in(SUBMIT, serde_json::json!({ "Numbers": numbers }))
            .await
        {
            Ok(Answer::Saved { .. }) => Delivery::Delivered,
            Ok(Answer::Failed(detail)) => Delivery::Rejected {
                detail: format!("saved {numbers:?} but submit failed: {detail}"),
            },
            Ok(Answer::SessionLost) => Delivery::Failed {
                retry_after: None,
                detail: "session lost during submit".into(),
            },
            Err(delivery) => delivery,
        }
    }
}

fn today() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        now.month() as u8,
        now.day()
    )
}

impl SinkConnector for KingdeeConnector {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, _attempt: u32) -> DeliveryFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.deliver(sync).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn answers_are_read() {
        let saved = r#"{"Result":{"ResponseStatus":{"IsSuccess":true,"Errors":[],"SuccessEntitys":[{"Id":100,"Number":"XSDD000123","DIndex":0}]},"Id":100,"Number":"XSDD000123"}}"#;
        assert_eq!(
            read(saved),
            Answer::Saved {
                numbers: vec!["XSDD000123".into()]
            }
        );
        let lost = r#"[[{"Result":{"ResponseStatus":{"ErrorCode":500,"IsSuccess":false,"Errors":[{"FieldName":null,"Message":"会话信息已丢失，请重新登录","DIndex":0}]}}}]]"#;
        assert_eq!(read(lost), Answer::SessionLost);
        let refused = r#"{"Result":{"ResponseStatus":{"ErrorCode":500,"IsSuccess":false,"Errors":[{"FieldName":"FCustomerID","Message":"字段“客户”是必填项","DIndex":0}]}}}"#;
        assert!(matches!(read(refused), Answer::Failed(m) if m.contains("客户")));
    }

    /// A K3 Cloud stand-in: requires the session cookie, and drops the session once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logs_in_keeps_the_cookie_and_replays_after_a_lost_session() {
        use axum::extract::{Path, State};
        use axum::http::HeaderMap;
        #[derive(Default)]
        struct Server {
            logins: AtomicUsize,
            saves: Mutex<Vec<Value>>,
            dropped: AtomicUsize,
        }
        async fn handle(
            State(server): State<Arc<Server>>,
            Path(path): Path<String>,
            headers: HeaderMap,
            body: String,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let body: Value = serde_json::from_str(&body).unwrap();
            if path == LOGIN {
                assert_eq!(
                    body["parameters"],
                    serde_json::json!(["acct", "kd_user", "kd_pass", 2052])
                );
                server.logins.fetch_add(1, Ordering::SeqCst);
                return (
                    [("set-cookie", "kdservice-sessionid=s1; Path=/")],
                    r#"{"LoginResultType":1,"KDSVCSessionId":"s1"}"#,
                )
                    .into_response();
            }
            let cookie = headers
                .get("cookie")
                .and_then(|c| c.to_str().ok())
                .unwrap_or_default();
            assert!(
                cookie.contains("kdservice-sessionid=s1"),
                "session cookie sent"
            );
            if server.dropped.fetch_add(1, Ordering::SeqCst) == 0 {
                return r#"[[{"Result":{"ResponseStatus":{"ErrorCode":500,"IsSuccess":false,"Errors":[{"Message":"会话信息已丢失，请重新登录"}]}}}]]"#.into_response();
            }
            assert_eq!(path, SAVE);
            server.saves.lock().unwrap().push(body);
            r#"{"Result":{"ResponseStatus":{"IsSuccess":true,"SuccessEntitys":[{"Number":"XSDD1"}]}}}"#.into_response()
        }
        let server = Arc::new(Server::default());
        let app = axum::Router::new()
            .route("/k3cloud/{path}", axum::routing::post(handle))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/k3cloud/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let toml = format!(
            "rules = []\n[[sinks]]\nname = \"erp\"\nkind = \"kingdee\"\nurl = \"{url}\"\nrate = \"10/s\"\n[sinks.credentials]\nacct_id = \"K3_ACCT\"\nusername = \"K3_USER\"\npassword = \"K3_PASS\"\n"
        );
        let config = Config::layered(Some(("test.toml".into(), toml))).unwrap();
        let secrets: crate::secrets::SecretLookup = Arc::new(|name: &str| {
            Some(
                match name {
                    "K3_ACCT" => "acct",
                    "K3_USER" => "kd_user",
                    _ => "kd_pass",
                }
                .to_owned(),
            )
        });
        let connector = super::super::connector(&config.sinks[0], &secrets).unwrap();
        let sync = SyncIntent {
            id: "douyin:1:2:erp".into(),
            sink: "erp".into(),
            order: "douyin:1".into(),
            seq: 2,
            rule: "erp_on_paid".into(),
            payload: serde_json::json!({ "Model": { "FBillNo": "DY1", "FCustomerID": { "FNumber": "C001" } } }),
            fields: None,
            contents: None,
        };
        assert_eq!(
            connector.deliver(sync.clone().into(), 1).await,
            Delivery::Delivered
        );
        assert_eq!(
            server.logins.load(Ordering::SeqCst),
            2,
            "logged in, then again after the lost session"
        );
        let saves = server.saves.lock().unwrap().clone();
        assert_eq!(saves.len(), 1);
        assert_eq!(saves[0]["formid"], "SAL_SaleOrder");
        assert_eq!(saves[0]["data"]["Model"]["FBillNo"], "DY1");

        let mut no_model = sync;
        no_model.payload = serde_json::json!({ "order": "douyin:1" });
        assert!(matches!(
            connector.deliver(no_model.into(), 1).await,
            Delivery::Rejected { .. }
        ));
    }
}
