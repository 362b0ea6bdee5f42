//! Stripe as the tests see it: events shaped like the real ones (complete objects, with the
//! personal data Stripe really sends — names, phones, addresses, card details — so the tests can
//! prove none of it is kept), and the `Stripe-Signature` Stripe computes.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

/// The development secret the server accepts by default.
pub const SECRET: &str = "whsec_pexper_development_only";

/// Personal data planted in every payload; none of it may reach a table or a log line.
pub const NAME: &str = "Ada Lovelace-Byron";
pub const PHONE: &str = "+44 7700 900461";
pub const LINE1: &str = "12 Marylebone Crescent";
pub const CITY: &str = "Little Hadham";
pub const POSTCODE: &str = "SG11 2QX";
pub const CARD_LAST4: &str = "4919";
pub const FINGERPRINT: &str = "Qx7pLmN2vB9cRt4e";
pub const PLANTED: &[&str] = &[NAME, PHONE, LINE1, CITY, POSTCODE, FINGERPRINT, "last4"];

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Posts `event` to the webhook at `base`, signed now with the development secret, as Stripe
/// would deliver it.
pub async fn deliver(client: &reqwest::Client, base: &str, event: &Value) -> reqwest::Response {
    let payload = event.to_string();
    client
        .post(format!("{base}/v1/webhooks/stripe"))
        .header("content-type", "application/json; charset=utf-8")
        .header("Stripe-Signature", sign(&payload, SECRET, now()))
        .body(payload)
        .send()
        .await
        .unwrap()
}

/// `t=…,v1=…` over `t.payload`, as Stripe signs.
pub fn sign(payload: &str, secret: &str, t: i64) -> String {
    format!("t={t},v1={}", v1(payload, secret, t))
}

pub fn v1(payload: &str, secret: &str, t: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{payload}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A unique suffix for ids, so tests do not collide.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// One purchase's ids, as Stripe would assign them.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub session: String,
    pub intent: String,
    pub charge: String,
    pub email: String,
    pub amount: i64,
}

impl Checkout {
    pub fn new(email: &str) -> Self {
        let id = unique();
        Self {
            session: format!("cs_test_a1{id}"),
            intent: format!("pi_3Q{id}"),
            charge: format!("ch_3Q{id}"),
            email: email.to_owned(),
            amount: 4900,
        }
    }

    /// `checkout.session.completed` (or `async_payment_*`), complete as the API renders it.
    pub fn session_event(&self, kind: &str, payment_status: &str) -> Value {
        event(kind, self.session_object(payment_status))
    }

    pub fn session_object(&self, payment_status: &str) -> Value {
        json!({
            "id": self.session,
            "object": "checkout.session",
            "adaptive_pricing": {"enabled": true},
            "after_expiration": null,
            "allow_promotion_codes": false,
            "amount_subtotal": self.amount,
            "amount_total": self.amount,
            "automatic_tax": {"enabled": true, "liability": {"type": "self"}, "provider": "stripe", "status": "complete"},
            "billing_address_collection": "required",
            "cancel_url": "https://pexper.com/buy",
            "client_reference_id": null,
            "client_secret": null,
            "collected_information": {"shipping_details": null},
            "consent": null,
            "consent_collection": null,
            "created": now() - 120,
            "currency": "usd",
            "currency_conversion": null,
            "custom_fields": [],
            "custom_text": {"after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null},
            "customer": null,
            "customer_creation": "if_required",
            "customer_details": {
                "address": {"city": CITY, "country": "GB", "line1": LINE1, "line2": null, "postal_code": POSTCODE, "state": null},
                "email": self.email,
                "name": NAME,
                "phone": PHONE,
                "tax_exempt": "none",
                "tax_ids": []
            },
            "customer_email": null,
            "discounts": [],
            "expires_at": now() + 86_000,
            "invoice": null,
            "invoice_creation": {"enabled": false, "invoice_data": {"account_tax_ids": null, "custom_fields": null, "description": null, "footer": null, "issuer": null, "metadata": {}, "rendering_options": null}},
            "livemode": false,
            "locale": "auto",
            "metadata": {"product": "pexper", "price": "price_1PexperOneTime"},
            "mode": "payment",
            "payment_intent": self.intent,
            "payment_link": null,
            "payment_method_collection": "if_required",
            "payment_method_configuration_details": {"id": "pmc_1Pexper", "parent": null},
            "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
            "payment_method_types": ["card", "link", "sepa_debit"],
            "payment_status": payment_status,
            "permissions": null,
            "phone_number_collection": {"enabled": true},
            "presentment_details": {"presentment_amount": self.amount, "presentment_currency": "usd"},
            "recovered_from": null,
            "saved_payment_method_options": null,
            "setup_intent": null,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "status": "complete",
            "submit_type": "pay",
            "subscription": null,
            "success_url": "https://pexper.com/thanks?session_id={CHECKOUT_SESSION_ID}",
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": null,
            "wallet_options": null
        })
    }

    /// `charge.refunded` with the charge's cumulative `amount_refunded`.
    pub fn refund_event(&self, amount_refunded: i64) -> Value {
        event("charge.refunded", self.charge_object(amount_refunded))
    }

    pub fn charge_object(&self, amount_refunded: i64) -> Value {
        json!({
            "id": self.charge,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": self.amount,
            "amount_refunded": amount_refunded,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": format!("txn_{}", unique()),
            "billing_details": {
                "address": {"city": CITY, "country": "GB", "line1": LINE1, "line2": null, "postal_code": POSTCODE, "state": null},
                "email": self.email,
                "name": NAME,
                "phone": PHONE,
                "tax_id": null
            },
            "calculated_statement_descriptor": "PEXPER",
            "captured": true,
            "created": now() - 100,
            "currency": "usd",
            "customer": null,
            "description": null,
            "disputed": false,
            "failure_balance_transaction": null,
            "failure_code": null,
            "failure_message": null,
            "fraud_details": {},
            "livemode": false,
            "metadata": {},
            "on_behalf_of": null,
            "outcome": {"advice_code": null, "network_advice_code": null, "network_decline_code": null, "network_status": "approved_by_network", "reason": null, "risk_level": "normal", "risk_score": 12, "seller_message": "Payment complete.", "type": "authorized"},
            "paid": true,
            "payment_intent": self.intent,
            "payment_method": format!("pm_{}", unique()),
            "payment_method_details": {
                "card": {
                    "amount_authorized": self.amount,
                    "authorization_code": null,
                    "brand": "visa",
                    "checks": {"address_line1_check": "pass", "address_postal_code_check": "pass", "cvc_check": "pass"},
                    "country": "GB",
                    "exp_month": 8,
                    "exp_year": 2031,
                    "extended_authorization": {"status": "disabled"},
                    "fingerprint": FINGERPRINT,
                    "funding": "credit",
                    "incremental_authorization": {"status": "unavailable"},
                    "installments": null,
                    "last4": CARD_LAST4,
                    "mandate": null,
                    "multicapture": {"status": "unavailable"},
                    "network": "visa",
                    "network_token": {"used": false},
                    "network_transaction_id": "583501209321234",
                    "overcapture": {"maximum_amount_capturable": self.amount, "status": "unavailable"},
                    "regulated_status": "unregulated",
                    "three_d_secure": null,
                    "wallet": null
                },
                "type": "card"
            },
            "radar_options": {},
            "receipt_email": self.email,
            "receipt_number": null,
            "receipt_url": "https://pay.stripe.com/receipts/payment/CAcaFwoVYWNjdF8x",
            "refunded": amount_refunded >= self.amount,
            "refunds": {"object": "list", "data": [], "has_more": false, "total_count": 0, "url": format!("/v1/charges/{}/refunds", self.charge)},
            "review": null,
            "shipping": null,
            "source": null,
            "source_transfer": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": "succeeded",
            "transfer_data": null,
            "transfer_group": null
        })
    }

    /// `charge.dispute.created` / `.closed`, with the evidence Stripe gathers (personal data).
    pub fn dispute_event(&self, kind: &str, status: &str) -> Value {
        event(
            kind,
            json!({
                "id": format!("du_{}", unique()),
                "object": "dispute",
                "amount": self.amount,
                "balance_transactions": [],
                "charge": self.charge,
                "created": now() - 60,
                "currency": "usd",
                "enhanced_eligibility_types": [],
                "evidence": {
                    "access_activity_log": null,
                    "billing_address": format!("{LINE1}, {CITY} {POSTCODE}"),
                    "cancellation_policy": null,
                    "customer_email_address": self.email,
                    "customer_name": NAME,
                    "customer_purchase_ip": "203.0.113.77",
                    "product_description": null,
                    "shipping_address": null,
                    "uncategorized_text": null
                },
                "evidence_details": {"due_by": now() + 600_000, "has_evidence": false, "past_due": false, "submission_count": 0},
                "is_charge_refundable": false,
                "livemode": false,
                "metadata": {},
                "network_reason_code": "10.4",
                "payment_intent": self.intent,
                "payment_method_details": {"card": {"brand": "visa", "case_type": "chargeback", "network_reason_code": "10.4"}, "type": "card"},
                "reason": "fraudulent",
                "status": status
            }),
        )
    }
}

/// An event envelope around `object`, with a fresh id.
pub fn event(kind: &str, object: Value) -> Value {
    json!({
        "id": format!("evt_1Q{}", unique()),
        "object": "event",
        "api_version": "2025-10-29.clover",
        "created": now(),
        "data": {"object": object},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind
    })
}
