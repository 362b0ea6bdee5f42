//! The few fields we read from Stripe's objects, read leniently.
//!
//! Stripe adds fields with every API version and some fields are null or expanded depending on
//! the request that made the object: a paid purchase must never be dropped because a payload
//! changed shape. So every struct here names only what we keep, unknown fields are ignored, and
//! everything but the ids is optional. Names, phones, addresses (but the country), card details
//! and the rest of the payload are never even deserialized.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The event envelope; `data.object` is read by type once we know the type. What the webhook's
/// document states of a delivery (Stripe sends more fields, which are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = StripeEvent)]
pub struct Event<'a> {
    /// `evt_…`
    #[schema(min_length = 1)]
    pub id: String,
    /// The event type, e.g. `checkout.session.completed`; types we do not act on are
    /// acknowledged and ignored.
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    pub kind: String,
    /// Unix seconds (1970 to 9999).
    #[schema(minimum = 0, maximum = 253_402_300_799_i64)]
    pub created: i64,
    #[serde(default)]
    pub livemode: bool,
    #[serde(borrow)]
    pub data: EventData<'a>,
}

impl Event<'_> {
    /// Whether it is an event as the document states one: an id, a type, a time, and an
    /// object.
    pub fn is_well_formed(&self) -> bool {
        !self.id.is_empty()
            && !self.kind.is_empty()
            && instant(self.created).is_some()
            && self.data.object.get().trim_start().starts_with('{')
    }
}

/// A Stripe time (Unix seconds) as an instant, if it is one Stripe could send and Postgres
/// can store: from 1970 to the end of 9999.
pub fn instant(unix: i64) -> Option<time::OffsetDateTime> {
    (0..=253_402_300_799)
        .contains(&unix)
        .then(|| time::OffsetDateTime::from_unix_timestamp(unix).ok())
        .flatten()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = StripeEventData)]
pub struct EventData<'a> {
    /// The object the event is about: its fields depend on the event's type (Stripe's API
    /// reference).
    #[serde(borrow)]
    #[schema(value_type = Object)]
    pub object: &'a RawValue,
}

impl Event<'_> {
    pub fn object<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.data.object.get())
    }
}

/// An id, or the object it names when the request expanded it (`"pi_…"` or `{"id": "pi_…"}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
}

fn id_of(e: &Option<Expandable>) -> Option<String> {
    e.as_ref().map(|e| e.id().to_owned())
}

/// `checkout.session.*`.
#[derive(Debug, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    /// `paid`, `unpaid` or `no_payment_required`.
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub customer_details: Option<CustomerDetails>,
    /// Older sessions, or a prefilled address, carry it here.
    #[serde(default)]
    pub customer_email: Option<String>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Present only when the session was retrieved with `expand[]=line_items`.
    #[serde(default)]
    pub line_items: Option<List<LineItem>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CustomerDetails {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub address: Option<Address>,
}

/// Of an address we read the country alone (tax); the rest is never deserialized.
#[derive(Debug, Default, Deserialize)]
pub struct Address {
    #[serde(default)]
    pub country: Option<String>,
}

/// The keys our checkout page sets on the session (`product`, `price`).
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub price: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
}

#[derive(Debug, Deserialize)]
pub struct LineItem {
    #[serde(default)]
    pub price: Option<Price>,
}

#[derive(Debug, Deserialize)]
pub struct Price {
    pub id: String,
    #[serde(default)]
    pub product: Option<Expandable>,
}

impl CheckoutSession {
    pub fn payment_intent_id(&self) -> Option<String> {
        id_of(&self.payment_intent)
    }

    /// The buyer's address: Stripe's collected one, else the prefilled one.
    pub fn email(&self) -> Option<&str> {
        self.customer_details
            .as_ref()
            .and_then(|d| d.email.as_deref())
            .or(self.customer_email.as_deref())
    }

    pub fn country(&self) -> Option<String> {
        let country = self
            .customer_details
            .as_ref()?
            .address
            .as_ref()?
            .country
            .as_deref()?
            .to_ascii_uppercase();
        (country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())).then_some(country)
    }

    /// `(product, price id)`: from the expanded line items when present, else from the
    /// metadata our checkout page sets, else the one product we sell.
    pub fn product(&self) -> (String, Option<String>) {
        let price = self
            .line_items
            .as_ref()
            .and_then(|l| l.data.iter().find_map(|item| item.price.as_ref()));
        let metadata = self.metadata.as_ref();
        let product = price
            .and_then(|p| p.product.as_ref().map(|p| p.id().to_owned()))
            .or_else(|| metadata.and_then(|m| m.product.clone()))
            .unwrap_or_else(|| "pexper".to_owned());
        let price_id = price
            .map(|p| p.id.clone())
            .or_else(|| metadata.and_then(|m| m.price.clone()));
        (product, price_id)
    }
}

/// `charge.refunded`.
#[derive(Debug, Deserialize)]
pub struct Charge {
    pub id: String,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
    /// Cumulative over every refund of the charge.
    #[serde(default)]
    pub amount_refunded: i64,
}

impl Charge {
    pub fn payment_intent_id(&self) -> Option<String> {
        id_of(&self.payment_intent)
    }
}

/// `charge.dispute.*`.
#[derive(Debug, Deserialize)]
pub struct Dispute {
    #[serde(default)]
    pub charge: Option<Expandable>,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
    /// `warning_needs_response`, `needs_response`, `under_review`, `won`, `lost`, …
    pub status: String,
}

impl Dispute {
    pub fn charge_id(&self) -> Option<String> {
        id_of(&self.charge)
    }
    pub fn payment_intent_id(&self) -> Option<String> {
        id_of(&self.payment_intent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_with_expanded_and_missing_fields_still_reads() {
        let json = r#"{"id":"cs_1","payment_intent":{"id":"pi_1","object":"payment_intent"},
            "amount_total":null,"customer_details":{"email":"a@b.example","name":"A B",
            "address":{"city":"Berlin","country":"de","line1":"x"},"phone":"+49"},
            "line_items":{"object":"list","data":[{"price":{"id":"price_1","product":"prod_1"}}]},
            "some_future_field":{"nested":[1,2,3]}}"#;
        let s: CheckoutSession = serde_json::from_str(json).expect("lenient");
        assert_eq!(s.payment_intent_id().as_deref(), Some("pi_1"));
        assert_eq!(s.email(), Some("a@b.example"));
        assert_eq!(s.country().as_deref(), Some("DE"));
        assert_eq!(s.product(), ("prod_1".into(), Some("price_1".into())));
        assert_eq!(s.amount_total, None);
    }

    #[test]
    fn the_bare_minimum_of_a_session_is_its_id() {
        let s: CheckoutSession = serde_json::from_str(r#"{"id":"cs_2"}"#).expect("lenient");
        assert_eq!(s.email(), None);
        assert_eq!(s.product(), ("pexper".into(), None));
        assert!(serde_json::from_str::<CheckoutSession>("{}").is_err());
    }
}
