//! Entry points for the fuzz targets in `fuzz/`: every source's verification and decoder on
//! arbitrary bytes, with fixed test credentials. They must never panic, whatever the input; a
//! refusal is an `Err` naming the problem. Not for production use.

use super::{Decoded, RawRequest, SecretLookup, SourceEntry, SourceRegistry};
use axum::http::HeaderMap;
use std::sync::{Arc, OnceLock};

/// A generic source as a dealer portal would configure it.
const GENERIC: &str = r#"
[sources.generic.portal]
secret_env = "FUZZ_SECRET"
channel = "dealer"
events_path = "/updates"
order_path = "/order/po"
status_path = "/order/state"
event_id_path = "/id"
occurred_at_path = "/at"
[sources.generic.portal.fields]
waybill_no = "/shipping/tracking"
[sources.generic.portal.status_map]
CONFIRMED = "paid"
DISPATCHED = "shipped"
"#;

fn registry() -> &'static SourceRegistry {
    static REGISTRY: OnceLock<SourceRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let secrets: SecretLookup = Arc::new(|name: &str| {
            Some(
                // The fixtures' credentials, so fixture-based seeds reach the deep paths.
                match name {
                    "ORDERHUB_YOUZAN_CLIENT_ID" => "yz-client",
                    "ORDERHUB_KUAISHOU_APP_KEY" => "ks_app_key_test",
                    "ORDERHUB_WECHAT_TOKEN" => "orderhub-wechat-token",
                    "ORDERHUB_KUAISHOU_MESSAGE_KEY" => "a3VhaXNob3UtbXNnLWtleQ==",
                    "ORDERHUB_WECHAT_AES_KEY" => "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
                    "ORDERHUB_EVENTS_SECRET" | "FUZZ_SECRET" => {
                        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
                    }
                    _ => "fuzz",
                }
                .to_owned(),
            )
        });
        let mut config = crate::config::Config::embedded().expect("the embedded default is valid");
        let generic = crate::config::Config::layered(Some(("fuzz.toml".into(), GENERIC.into())))
            .expect("the fuzz config is valid");
        config
            .sources
            .insert("generic".into(), generic.sources["generic"].clone());
        let sources = super::Sources::configure(&config).expect("the fuzz config is valid");
        SourceRegistry::build(&sources, &secrets)
    })
}

/// Runs `source`'s verification and decoder on `headers` (`name: value` lines), `query` and
/// `body`; the number of events decoded, or the refusal.
pub fn decode(source: &str, headers: &str, query: &str, body: &[u8]) -> Result<usize, String> {
    let Some(SourceEntry::Ready(adapter)) = registry().sources.get(source) else {
        return Err(format!("no source {source}"));
    };
    let mut map = HeaderMap::new();
    for line in headers.lines() {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name.trim()),
                axum::http::HeaderValue::try_from(value.trim()),
            )
        {
            map.insert(name, value);
        }
    }
    let mut request = RawRequest::plain(&map, query, body);
    request.received_at = 1_700_000_000_000;
    request.path_token = Some("fuzz");
    // Decoders run whether or not verification passes, so the fuzzer reaches them.
    let _ = adapter.verify(&request);
    let _ = adapter.url_verification(query);
    match adapter.decode(&request).map_err(|e| e.to_string())? {
        Decoded::Events { events, rejected } if events.is_empty() => Err(rejected
            .first()
            .map_or("no message".into(), |r| r.error.to_string())),
        Decoded::Events { events, .. } => Ok(events.len()),
        Decoded::Verification => Ok(0),
    }
}

/// Decodes one frame of a connection-based channel (`pdd`: JSON text, `tmc`: TOP's binary
/// framing) or one answer of a polled one (`wdt`: a `logistics_sync_query` page) and maps its
/// messages; the number of events.
pub fn channel_frame(channel: &str, bytes: &[u8]) -> Result<usize, String> {
    // Parsed once: re-parsing the embedded default per input held the fuzzer to ~300 runs/s.
    static PDD: OnceLock<super::pdd::PddConfig> = OnceLock::new();
    static TMC: OnceLock<super::tmc::TmcConfig> = OnceLock::new();
    let secrets: SecretLookup = Arc::new(|_: &str| Some("fuzz".to_owned()));
    match channel {
        "pdd" => {
            let config = PDD.get_or_init(|| super::registry::default_config("pdd"));
            let pdd = super::pdd::build(config, &secrets)?;
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            match pdd.decode(text, 1).map_err(|e| e.to_string())? {
                super::pdd::Decoded::Message { .. } => Ok(1),
                super::pdd::Decoded::Ignore => Ok(0),
            }
        }
        "tmc" => {
            let config = TMC.get_or_init(|| super::registry::default_config("tmc"));
            let tmc = super::tmc::build(config, &secrets)?;
            let message = super::tmc::decode(bytes)?;
            let _ = super::tmc::encode(&message);
            tmc.map(&message, 1).map(|_| 1).map_err(|e| e.to_string())
        }
        "wdt" => {
            static WDT: OnceLock<super::wdt::WdtPoller> = OnceLock::new();
            let wdt = WDT.get_or_init(|| {
                let mut wdt: super::wdt::WdtConfig = super::registry::default_config("wdt");
                wdt.default_channel = Some("douyin".into());
                super::wdt::build(&wdt, &secrets).expect("fuzz credentials")
            });
            let answer: serde_json::Value = super::decode_json(bytes).map_err(|e| e.to_string())?;
            wdt.map_page(&answer, 1).map(|page| page.events.len())
        }
        other => Err(format!("no channel {other}")),
    }
}

/// Splits fuzz input into headers, query and body at its first two `\0` bytes.
pub fn split(data: &[u8]) -> (String, String, &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0);
    let headers = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (headers, query, parts.next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_decodes_its_fixture_and_survives_garbage() {
        let fixture = |path: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/{path}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let query = |path: &str| String::from_utf8(fixture(path)).unwrap();
        assert_eq!(
            decode("youzan", "", "", &fixture("youzan/trade_buyer_pay.json")),
            Ok(1)
        );
        assert_eq!(
            decode("kuaishou", "", "", &fixture("kuaishou/pay_success.body")),
            Ok(1)
        );
        assert_eq!(
            decode(
                "wechat",
                "",
                &query("wechat/order_deliver.safe.query"),
                &fixture("wechat/order_deliver.safe.json")
            ),
            Ok(1)
        );
        assert_eq!(
            channel_frame("wdt", &fixture("wdt/logistics_sync_query.json")),
            Ok(3),
            "every shop falls back to the fuzz config's default channel"
        );
        assert_eq!(decode("sf", "", "", &fixture("sf/route_push.form")), Ok(3));
        assert_eq!(
            decode("portal", "", "", &fixture("generic/dealer_portal.json")),
            Ok(2)
        );
        for source in [
            "douyin", "youzan", "kuaishou", "wechat", "sf", "portal", "events",
        ] {
            for garbage in [&b""[..], b"\xff\xfe", b"[{}]", b"{\"a\":", b"msgData=%7B"] {
                assert!(
                    decode(source, "x: y", "a=%ZZ", garbage).is_err(),
                    "{source}"
                );
            }
        }
        let pdd = br#"{"id":1,"commandType":"Common","message":{"type":"pdd_trade_TradeConfirmed","content":"{\"tid\":\"T\"}"}}"#;
        assert_eq!(channel_frame("pdd", pdd), Ok(1));
        assert!(
            channel_frame("tmc", b"\x02\x02\x00\x00").is_err(),
            "no topic"
        );
        assert!(channel_frame("tmc", b"\xff").is_err());
        let (headers, query, body) = split(b"event-sign: 1\0nonce=1\0{}");
        assert_eq!(
            (headers.as_str(), query.as_str(), body),
            ("event-sign: 1", "nonce=1", &b"{}"[..])
        );
    }
}
