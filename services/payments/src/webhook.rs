//! `POST /v1/webhooks/stripe`: verify, record, apply, acknowledge — one transaction, no email.
//!
//! Verification is async-stripe's (`Stripe-Signature`: HMAC-SHA256 of `t.payload`, any `v1`
//! value, ±300 s), tried with each configured secret so one can be rotated without downtime.
//! Its strict typed parse is not relied on: a verified event whose shape it does not know is
//! read by our lenient types (see `stripe`). A request that fails verification stores nothing
//! and leaves no trace but a warning and `pexper_webhook_events_total{outcome="refused"}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pexper_platform::Platform;
use pexper_platform::address::EmailAddress;
use pexper_platform::http::ApiError;
use pexper_platform::person;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use stripe_webhook::{Webhook, WebhookError};
use time::OffsetDateTime;

use crate::store::{self, Adjustment, EventRecord, Outcome, SessionFacts};
use crate::stripe::{Charge, CheckoutSession, Dispute, Event};
use crate::{fulfilment, seal};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Acknowledged {
    /// `processed`, `duplicate` (this event id was processed before) or `ignored`.
    status: &'static str,
}

/// Receive a Stripe event.
#[utoipa::path(post, path = "/v1/webhooks/stripe", tag = "payments",
    request_body(content = crate::stripe::Event<'static>, description = "The event, exactly as Stripe signed it", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "`t=<unix>,v1=<hex HMAC-SHA256>[,v1=…]`")),
    responses(
        (status = 200, description = "Verified and processed (or a duplicate, or a type we ignore)", body = Acknowledged),
        (status = 400, description = "Missing, malformed, wrong or stale signature: nothing stored", body = pexper_wire::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = pexper_wire::ErrorBody),
        (status = 422, description = "Verified, but not an event we can read: Stripe will retry", body = pexper_wire::ErrorBody)))]
pub async fn receive(
    State(platform): State<Platform>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Acknowledged>, ApiError> {
    // Counted when dropped: a delivery that the request timeout (or the client) cuts short
    // is a failure too.
    let mut outcome = CountedDelivery {
        platform: &platform,
        counted: ("failed", "no_answer"),
    };
    let received = verify_and_process(&platform, &headers, &body).await;
    outcome.counted = match &received {
        Ok(status) => (status, "none"),
        Err(ApiError::Client { status, code, .. }) if *status == StatusCode::BAD_REQUEST => {
            ("refused", code)
        }
        Err(ApiError::Client { code, .. }) => ("unreadable", code),
        Err(ApiError::Internal(_)) => ("failed", "error"),
    };
    Ok(axum::Json(Acknowledged { status: received? }))
}

/// A delivery's outcome for `pexper_webhook_events_total`, recorded when dropped.
struct CountedDelivery<'a> {
    platform: &'a Platform,
    counted: (&'static str, &'static str),
}

impl Drop for CountedDelivery<'_> {
    fn drop(&mut self) {
        let (outcome, reason) = self.counted;
        self.platform.metrics.webhook_event(outcome, reason);
    }
}

async fn verify_and_process(
    platform: &Platform,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<&'static str, ApiError> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            reject(
                "missing_signature",
                "the Stripe-Signature header is missing",
            )
        })?;
    let payload = std::str::from_utf8(body)
        .map_err(|_| reject("invalid_signature", "the body is not UTF-8"))?;
    verify(payload, signature, &platform.config.stripe_webhook_secrets)?;

    // A NUL escape is no event Stripe sends, and Postgres text cannot hold one: refused here,
    // whichever field carries it, before anything is stored.
    let event: Event<'_> = serde_json::from_str(payload)
        .ok()
        .filter(|_| !payload.contains("\\u0000"))
        .filter(Event::is_well_formed)
        .ok_or_else(|| {
            tracing::warn!("verified Stripe payload is not an event");
            ApiError::unprocessable("unreadable_event", "not a Stripe event")
        })?;
    let status = process(platform, &event).await?;
    tracing::info!(event_id = %event.id, event_type = %event.kind, status, "stripe event");
    Ok(status)
}

fn reject(code: &'static str, message: &'static str) -> ApiError {
    tracing::warn!(reason = code, "stripe webhook refused");
    ApiError::bad_request(code, message)
}

/// Accepts the payload if any `v1` signature matches any configured secret, within ±300 s.
fn verify(payload: &str, header: &str, secrets: &[SecretString]) -> Result<(), ApiError> {
    for secret in secrets {
        match Webhook::construct_event(payload, header, secret.expose_secret()) {
            // BadParse comes only after the signature and the timestamp passed.
            Ok(_) | Err(WebhookError::BadParse(_)) => return Ok(()),
            Err(WebhookError::BadSignature) => continue,
            Err(WebhookError::BadTimestamp(_)) => {
                return Err(reject(
                    "stale_signature",
                    "the signature's timestamp is more than 300 s away",
                ));
            }
            Err(WebhookError::BadHeader(_) | WebhookError::BadKey) => {
                return Err(reject(
                    "invalid_signature",
                    "the Stripe-Signature header is malformed",
                ));
            }
        }
    }
    Err(reject(
        "invalid_signature",
        "no signature matches a configured secret",
    ))
}

fn unreadable(event: &Event<'_>) -> ApiError {
    tracing::warn!(event_id = %event.id, event_type = %event.kind, "unreadable Stripe object");
    ApiError::unprocessable("unreadable_event", "the event's object could not be read")
}

/// What an event type asks of us; every other type is acknowledged and ignored.
#[derive(Debug, Clone, Copy)]
enum Action {
    Session(SessionEvent),
    Refund,
    Dispute,
    Ignore,
}

/// The three Checkout Session events: each tells the whole session, and what it says of the
/// payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEvent {
    Completed,
    PaymentSucceeded,
    PaymentFailed,
}

impl Action {
    fn of(kind: &str) -> Action {
        match kind {
            "checkout.session.completed" => Action::Session(SessionEvent::Completed),
            "checkout.session.async_payment_succeeded" => {
                Action::Session(SessionEvent::PaymentSucceeded)
            }
            "checkout.session.async_payment_failed" => Action::Session(SessionEvent::PaymentFailed),
            "charge.refunded" => Action::Refund,
            "charge.dispute.created" | "charge.dispute.closed" => Action::Dispute,
            _ => Action::Ignore,
        }
    }
}

/// What became of an event, and the payment (session, intent or charge) it was about.
type Applied = (Outcome, Option<String>);

/// Applies one verified event in one transaction; the job queue gets any email.
async fn process(platform: &Platform, event: &Event<'_>) -> Result<&'static str, ApiError> {
    let occurred_at = crate::stripe::instant(event.created)
        .ok_or_else(|| ApiError::unprocessable("unreadable_event", "bad `created`"))?;
    let record = EventRecord {
        id: &event.id,
        kind: &event.kind,
        livemode: event.livemode,
        occurred_at,
    };
    let mut tx = platform.pool.begin().await?;
    if !store::record_event(&mut tx, &record).await? {
        return Ok("duplicate");
    }
    let (outcome, payment_ref) = match Action::of(&event.kind) {
        Action::Session(which) => session(platform, &mut tx, event, which, occurred_at).await?,
        Action::Refund => refund(platform, &mut tx, &record, event).await?,
        Action::Dispute => dispute(platform, &mut tx, &record, event).await?,
        Action::Ignore => (Outcome::Ignored, None),
    };
    let payment_ref = payment_ref.map(|r| seal::ref_hash(&platform.keyring, &r));
    store::set_outcome(&mut tx, &event.id, outcome, payment_ref.as_deref()).await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    Ok(match outcome {
        Outcome::Ignored => "ignored",
        Outcome::Applied | Outcome::Pending => "processed",
    })
}

/// The facts a Checkout Session event states, checked.
fn session_facts(
    event: &Event<'_>,
    session: &CheckoutSession,
    which: SessionEvent,
    occurred_at: OffsetDateTime,
) -> Result<SessionFacts, ApiError> {
    let paid = match which {
        SessionEvent::Completed => matches!(
            session.payment_status.as_deref(),
            Some("paid" | "no_payment_required")
        ),
        SessionEvent::PaymentSucceeded => true,
        SessionEvent::PaymentFailed => false,
    };
    let (product, price_id) = session.product();
    let amount_total = session.amount_total.unwrap_or(0);
    let currency = session
        .currency
        .as_deref()
        .unwrap_or("usd")
        .to_ascii_lowercase();
    if amount_total < 0 || currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase())
    {
        return Err(unreadable(event));
    }
    Ok(SessionFacts {
        payment_intent_id: session.payment_intent_id(),
        product,
        price_id,
        amount_total,
        currency,
        country: session.country(),
        livemode: event.livemode,
        created_at: session
            .created
            .and_then(crate::stripe::instant)
            .unwrap_or(occurred_at),
        paid,
        failed: which == SessionEvent::PaymentFailed,
        occurred_at,
        session_id: session.id.clone(),
    })
}

/// A Checkout Session event: the purchase is created or told more, then fulfilled as its
/// state now says.
async fn session(
    platform: &Platform,
    tx: &mut sqlx::PgConnection,
    event: &Event<'_>,
    which: SessionEvent,
    occurred_at: OffsetDateTime,
) -> Result<Applied, ApiError> {
    let session: CheckoutSession = event.object().map_err(|_| unreadable(event))?;
    let facts = session_facts(event, &session, which, occurred_at)?;
    // Locked by their keyed hashes: a clear Stripe id never reaches Postgres, not even as a
    // lock's parameter in a log.
    let keyring = &platform.keyring;
    store::lock(tx, &seal::session_hash(keyring, &facts.session_id)).await?;
    if let Some(pi) = &facts.payment_intent_id {
        store::lock(tx, &seal::payment_hash(keyring, pi)).await?;
    }
    let id = match store::purchase_of_session(tx, keyring, &facts.session_id).await? {
        Some(id) => {
            store::update_purchase(tx, keyring, id, &facts).await?;
            id
        }
        None => {
            // A malformed address is not worth losing a purchase over: keep the purchase,
            // without a buyer to write to.
            let buyer = match session.email().map(EmailAddress::parse) {
                Some(Ok(email)) => Some(person::find_or_create(tx, keyring, &email).await?),
                _ => None,
            };
            store::insert_purchase(tx, keyring, &facts, buyer).await?
        }
    };
    fulfilment::apply(tx, platform, id).await?;
    Ok((Outcome::Applied, Some(facts.session_id)))
}

async fn refund(
    platform: &Platform,
    tx: &mut sqlx::PgConnection,
    record: &EventRecord<'_>,
    event: &Event<'_>,
) -> Result<Applied, ApiError> {
    let charge: Charge = event.object().map_err(|_| unreadable(event))?;
    let adjustment = Adjustment::Refund {
        payment_intent_id: charge.payment_intent_id(),
        charge_id: charge.id.clone(),
        amount_refunded: charge.amount_refunded,
    };
    adjust(platform, tx, record, &adjustment).await
}

async fn dispute(
    platform: &Platform,
    tx: &mut sqlx::PgConnection,
    record: &EventRecord<'_>,
    event: &Event<'_>,
) -> Result<Applied, ApiError> {
    let dispute: Dispute = event.object().map_err(|_| unreadable(event))?;
    let adjustment = Adjustment::Dispute {
        payment_intent_id: dispute.payment_intent_id(),
        charge_id: dispute.charge_id(),
        status: dispute.status.clone(),
    };
    if adjustment.payment_intent_id().is_none() && adjustment.charge_id().is_none() {
        return Err(unreadable(event));
    }
    adjust(platform, tx, record, &adjustment).await
}

/// Keeps a refund or dispute and applies it if its purchase is here; returns the outcome and
/// the payment it was about.
async fn adjust(
    platform: &Platform,
    tx: &mut sqlx::PgConnection,
    record: &EventRecord<'_>,
    adjustment: &Adjustment,
) -> Result<Applied, ApiError> {
    let payment = adjustment
        .payment_intent_id()
        .or(adjustment.charge_id())
        .unwrap_or_default()
        .to_owned();
    store::lock(tx, &seal::payment_hash(&platform.keyring, &payment)).await?;
    let outcome = match store::record_adjustment(tx, &platform.keyring, record, adjustment).await? {
        Some(purchase) => {
            fulfilment::apply(tx, platform, purchase).await?;
            Outcome::Applied
        }
        // Kept for when its purchase lands.
        None => Outcome::Pending,
    };
    Ok((outcome, Some(payment)))
}
