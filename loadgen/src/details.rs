//! `loadgen sinks --details`: the simulated channels' order APIs, so capacity runs include
//! order-detail traffic. Served beside the downstream systems on the same port; point an
//! engine's `[sources.douyin.details]` and `[sources.youzan.details]` `gateway` at it.
//!
//! - Douyin: `POST /token/create`, `/token/refresh`, `/order/orderDetail` (`param_json`
//!   `{"shop_order_id"}`), answered in the open platform's envelope (`code` 10000, `data`);
//! - Youzan: `POST /auth/token`, `/api/youzan.trade.get/4.0.0` (`{"tid"}`), answered
//!   `{success, code: 200, data: {full_order_info}}`.
//!
//! Each order's contents are derived from its id (1–3 lines, prices in fen or yuan as the
//! platform writes them), so a verifier can recompute them. Answers take the sinks' latency and
//! honour their error and throttle rates (a throttled call answers the platform's own limit
//! code: Douyin 60000, Youzan gateway 4101). `GET /_details` counts the calls by API.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counts of the order-API calls served, by API.
#[derive(Default)]
pub struct DetailCalls(Mutex<BTreeMap<&'static str, u64>>);

impl DetailCalls {
    fn count(&self, api: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(api)
            .or_default() += 1;
    }

    /// The counts as JSON.
    pub fn snapshot(&self) -> Value {
        json!(*self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The lines of order `id`: 1–3, each with a seller code, a quantity and a unit price in fen.
pub fn lines_of(id: &str) -> Vec<(String, u32, u64)> {
    let seed = id
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    (0..=(seed % 3))
        .map(|n| {
            let sku = format!("LG-SKU-{}", (seed / 3 + n) % 500);
            let qty = 1 + ((seed >> (n * 4)) % 3) as u32;
            let price = 990 + ((seed >> (n * 8)) % 20_000);
            (sku, qty, price)
        })
        .collect()
}

fn total_fen(lines: &[(String, u32, u64)]) -> u64 {
    lines.iter().map(|(_, q, p)| u64::from(*q) * p).sum()
}

/// The answer to an order-API call at `path` with `body`, or `None` for a path that is none.
/// `throttled` answers the platform's call-limit error instead.
pub fn answer(calls: &DetailCalls, path: &str, body: &str, throttled: bool) -> Option<Value> {
    let params: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let douyin_limited =
        || json!({"code": 60000, "msg": "触发限流，请稍后重试", "sub_code": "", "sub_msg": ""});
    Some(match path {
        "/token/create" | "/token/refresh" => {
            calls.count("douyin_token");
            json!({"code": 10000, "msg": "success", "data": {"access_token": "loadgen-douyin",
                "expires_in": 604_800, "refresh_token": "loadgen-douyin-refresh"}})
        }
        "/order/orderDetail" => {
            calls.count("douyin_order_detail");
            if throttled {
                return Some(douyin_limited());
            }
            let id = params["shop_order_id"].as_str().unwrap_or_default();
            let lines = lines_of(id);
            let skus: Vec<Value> = lines
                .iter()
                .map(|(sku, qty, price)| json!({"sku_id": 1, "out_sku_id": "", "code": sku,
                    "product_name": format!("loadgen {sku}"), "item_num": qty, "origin_amount": price}))
                .collect();
            json!({"code": 10000, "msg": "success", "data": {"shop_order_detail": {
                "order_id": id, "order_status": 105, "pay_time": 1, "update_time": 1,
                "pay_amount": total_fen(&lines), "post_amount": 0, "doudian_open_id": "loadgen",
                "mask_post_receiver": "测**", "mask_post_tel": "1*******000",
                "post_addr": {"province": {"name": "浙江省"}, "city": {"name": "杭州市"}, "town": {"name": "余杭区"}},
                "mask_post_addr": {"detail": "文一西路****"},
                "sku_order_list": skus}}})
        }
        "/auth/token" => {
            calls.count("youzan_token");
            json!({"success": true, "code": 200, "data": {"access_token": "loadgen-youzan",
                "expires": 4_102_444_800_000u64}})
        }
        "/api/youzan.trade.get/4.0.0" => {
            calls.count("youzan_trade_get");
            if throttled {
                return Some(json!({"gw_err_resp": {"err_code": 4101, "err_msg": "请求太频繁"}}));
            }
            let tid = params["tid"].as_str().unwrap_or_default();
            let lines = lines_of(tid);
            let yuan = |fen: u64| format!("{}.{:02}", fen / 100, fen % 100);
            let orders: Vec<Value> = lines
                .iter()
                .map(|(sku, qty, price)| {
                    json!({"outer_sku_id": sku, "sku_id": 1,
                    "title": format!("loadgen {sku}"), "num": qty, "price": yuan(*price)})
                })
                .collect();
            json!({"success": true, "code": 200, "data": {"full_order_info": {
                "order_info": {"tid": tid, "status": "WAIT_SELLER_SEND_GOODS", "pay_time": "2026-01-01 00:00:00"},
                "pay_info": {"payment": yuan(total_fen(&lines)), "post_fee": "0.00"},
                "address_info": {"receiver_name": "$x$1$", "receiver_tel": "$y$1$",
                    "delivery_province": "浙江省", "delivery_city": "杭州市", "delivery_district": "余杭区",
                    "delivery_address": "$z$1$"},
                "orders": orders}}})
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_follow_from_the_order_id_and_calls_are_counted() {
        let calls = DetailCalls::default();
        let a = answer(
            &calls,
            "/order/orderDetail",
            r#"{"shop_order_id":"42"}"#,
            false,
        )
        .unwrap();
        let b = answer(
            &calls,
            "/order/orderDetail",
            r#"{"shop_order_id":"42"}"#,
            false,
        )
        .unwrap();
        assert_eq!(a, b);
        let lines = lines_of("42");
        assert!((1..=3).contains(&lines.len()));
        assert_eq!(
            a["data"]["shop_order_detail"]["pay_amount"],
            total_fen(&lines)
        );
        let limited = answer(&calls, "/order/orderDetail", "{}", true).unwrap();
        assert_eq!(limited["code"], 60000);
        let yz = answer(
            &calls,
            "/api/youzan.trade.get/4.0.0",
            r#"{"tid":"E1"}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            yz["data"]["full_order_info"]["orders"]
                .as_array()
                .unwrap()
                .len(),
            lines_of("E1").len()
        );
        assert!(answer(&calls, "/erp", "{}", false).is_none());
        assert_eq!(calls.snapshot()["douyin_order_detail"], 3);
        assert_eq!(calls.snapshot()["youzan_trade_get"], 1);
    }
}
