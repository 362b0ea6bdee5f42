//! The data map: every column of every table, declared once, by the service whose migrations
//! made it (`Service::tables`). Whether it is personal data and of which kind, what erasure
//! does to it, whether a person's export includes it, and who else receives it. A test reads
//! Postgres's catalog after every migration and fails for a column no service declares, or two
//! do (`tests/api/storage.rs`).

use serde::Serialize;

/// One table and what it is for (the purpose, in the processing record's words).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Table {
    pub name: &'static str,
    pub purpose: &'static str,
    pub columns: &'static [Column],
}

/// One column.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Column {
    pub name: &'static str,
    /// `None`: nothing about a person (our ids, counts, our own work's times and states).
    pub personal: Option<Category>,
    pub on_erasure: OnErasure,
    pub export: Export,
    /// Who else receives it, besides us.
    pub recipients: &'static [Recipient],
}

/// The kinds of personal data, as a processing record names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// An email address (sealed under the person's key).
    Contact,
    /// What links a row to a person, or finds them: their id, a keyed hash of their address.
    Identifier,
    /// What proves who someone is: password hashes, hashes of session and link tokens.
    Credential,
    /// What a person wrote to us, and what we wrote back (sealed under their key).
    Message,
    /// A purchase: product, amount, currency, country, Stripe's references to it.
    Transaction,
    /// What a person did with us and when: signed up, confirmed, was mailed, signed in.
    Activity,
    /// Their settings and standing with us: subscribed, restricted, their place in line.
    Preference,
    /// A device or browser label.
    Device,
}

/// What erasing a person does to a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "why")]
pub enum OnErasure {
    /// Not personal: nothing to do.
    NotApplicable,
    /// Its row is deleted.
    Deleted,
    /// Set to nothing; the row stays, no longer anyone's.
    Unlinked,
    /// Kept, for this reason and period (the row no longer points at the person).
    Kept(&'static str),
}

/// Whether a person's export includes a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "included", content = "why_not")]
pub enum Export {
    NotApplicable,
    Included,
    /// Not included, and why.
    Excluded(&'static str),
}

/// Who receives a column besides us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    /// The SMTP relay that carries our email (the address, and what the email says).
    MailRelay,
    /// Stripe, which takes the payment and told us of it.
    Stripe,
}

/// The recipients columns name, once: the mail relay (what our emails carry), Stripe (what it
/// took the payment with), or both.
pub const MAIL: &[Recipient] = &[Recipient::MailRelay];
pub const STRIPE: &[Recipient] = &[Recipient::Stripe];
pub const STRIPE_AND_MAIL: &[Recipient] = &[Recipient::Stripe, Recipient::MailRelay];

impl Column {
    /// A column that holds nothing about a person.
    pub const fn plain(name: &'static str) -> Self {
        Self {
            name,
            personal: None,
            on_erasure: OnErasure::NotApplicable,
            export: Export::NotApplicable,
            recipients: &[],
        }
    }

    /// Personal data of `category`, deleted with its row and included in the export (change
    /// either with `erased`/`kept` and `not_exported`).
    pub const fn personal(name: &'static str, category: Category) -> Self {
        Self {
            name,
            personal: Some(category),
            on_erasure: OnErasure::Deleted,
            export: Export::Included,
            recipients: &[],
        }
    }

    pub const fn unlinked(mut self) -> Self {
        self.on_erasure = OnErasure::Unlinked;
        self
    }

    pub const fn kept(mut self, why: &'static str) -> Self {
        self.on_erasure = OnErasure::Kept(why);
        self
    }

    pub const fn not_exported(mut self, why: &'static str) -> Self {
        self.export = Export::Excluded(why);
        self
    }

    pub const fn sent_to(mut self, recipients: &'static [Recipient]) -> Self {
        self.recipients = recipients;
        self
    }
}

use Category::*;

/// Why a column is not in the export: a hash of a secret, useless to its holder.
pub const HASH_OF_A_SECRET: &str = "a hash of a secret (password, token): useless to its holder";
/// Why a column is not in the export: the day's count of emails, our bookkeeping.
pub const MAIL_BUDGET: &str = "the day's count of emails sent, our bookkeeping";
/// Why a link's columns are not in the export: an emailed link, whose token is kept only as
/// a hash.
pub const LINK: &str = "an emailed link, kept only as a hash of its token";
/// Why a job's columns are not in the export: work in progress.
const WORK: &str = "ids (at most an address's keyed hash) of work in progress: gone once the \
                    job has run (one given up on: 30 days, jobs.dead)";
/// Why a Stripe reference's column is not in the export: the export gives the reference in
/// clear, from the sealed record.
pub const KEYED_HASH: &str = "a keyed hash of a reference the export gives in clear";
/// Why a column linking a row to its person is not in the export: the export is that person's,
/// and gives their id once.
pub const YOUR_ID: &str =
    "the link to the person, whose id the export gives once (email.person_id)";

/// The platform's own tables: people, the job queue, email history and suppression, keys.
pub const PLATFORM: &[Table] = &[
    Table {
        name: "person",
        purpose: "the one place an address is kept, sealed under the person's own key",
        columns: &[
            Column::personal("id", Identifier),
            Column::personal("email_index", Identifier)
                .not_exported("a keyed hash of the address, which the export gives in clear"),
            // Stripe has it too, from the buyer's checkout (not from us).
            Column::personal("email_sealed", Contact)
                .sent_to(STRIPE_AND_MAIL),
            Column::personal("data_key", Credential)
                .not_exported("the key the person's data is sealed under, destroyed at erasure"),
            Column::plain("key_version"),
            Column::personal("created_at", Activity),
            Column::plain("updated_at"),
            Column::personal("request_mail_day", Activity).not_exported(MAIL_BUDGET),
            Column::personal("request_mail_count", Activity).not_exported(MAIL_BUDGET),
            Column::personal("erasing_since", Activity)
                .not_exported("set only while the person is being erased"),
            Column::personal("restricted_since", Preference),
            Column::personal("access_mail_day", Activity).not_exported(MAIL_BUDGET),
            Column::personal("access_mail_count", Activity).not_exported(MAIL_BUDGET),
            Column::personal("owner_mail_day", Activity).not_exported(MAIL_BUDGET),
            Column::personal("owner_mail_count", Activity).not_exported(MAIL_BUDGET),
            Column::personal("held_mail_day", Activity).not_exported(MAIL_BUDGET),
            Column::personal("held_mail_count", Activity).not_exported(MAIL_BUDGET),
        ],
    },
    Table {
        name: "job",
        purpose: "background work (mostly email), deleted when done",
        columns: &[
            Column::plain("id"),
            Column::plain("kind"),
            Column::personal("payload", Identifier).not_exported(WORK),
            Column::plain("status"),
            Column::plain("attempts"),
            Column::plain("max_attempts"),
            Column::plain("run_at"),
            Column::plain("locked_until"),
            Column::plain("claim"),
            Column::plain("last_error"),
            Column::personal("person_id", Identifier).not_exported(WORK),
            // One policy notice per person and version is keyed by their id.
            Column::personal("dedupe_key", Identifier).not_exported(WORK),
            Column::plain("created_at"),
            Column::plain("updated_at"),
        ],
    },
    Table {
        name: "email_event",
        purpose: "the history of emails sent to a person (no content), for deliverability and proof",
        columns: &[
            Column::plain("id"),
            Column::personal("person_id", Identifier).not_exported(YOUR_ID),
            Column::personal("template", Activity),
            Column::personal("message_id", Activity),
            Column::personal("sent_at", Activity),
            Column::personal("soft_bounces", Activity),
        ],
    },
    Table {
        name: "email_suppression",
        purpose: "addresses we must not mail (bounced, complained, unsubscribed at erasure)",
        columns: &[
            Column::personal("address_hash", Identifier).kept(
                "a keyed hash of an erased address that had unsubscribed or bounced: what keeps \
                 it from our mail, as long as we send email",
            )
            .not_exported("a keyed hash of the address, which the export gives in clear"),
            Column::personal("created_at", Activity).kept("with the hash"),
            Column::personal("reason", Preference).kept("with the hash"),
        ],
    },
    Table {
        name: "erasure_journal",
        purpose: "whom to erase again when a backup from before their erasure is restored",
        columns: &[
            Column::personal("person_hash", Identifier)
                .kept(
                    "a SHA-256 of an erased person's id, to erase them again from a restored \
                     backup: as long as backups taken before the erasure exist",
                )
                .not_exported("exists only once the person is erased"),
            Column::plain("erased_at"),
        ],
    },
    Table {
        name: "mail_report",
        purpose: "bounce and complaint reports already read, so none is applied twice",
        columns: &[
            Column::plain("report_hash"),
            Column::plain("kind"),
            Column::plain("received_at"),
        ],
    },
    Table {
        name: "lookup_key",
        purpose: "the deployment's lookup keys, wrapped under the master key",
        columns: &[
            Column::plain("purpose"),
            Column::plain("master_version"),
            Column::plain("wrapped"),
            Column::plain("created_at"),
            Column::plain("updated_at"),
        ],
    },
    Table {
        name: "replica",
        purpose: "the running server processes and the key versions they hold",
        columns: &[
            Column::plain("id"),
            Column::plain("master_version"),
            Column::plain("master_versions"),
            Column::plain("started_at"),
            Column::plain("seen_at"),
        ],
    },
    Table {
        name: "recurring_job",
        purpose: "when each recurring job was last queued",
        columns: &[
            Column::plain("kind"),
            Column::plain("period"),
            Column::plain("updated_at"),
        ],
    },
    Table {
        name: "retention_run",
        purpose: "when each retention rule last ran",
        columns: &[
            Column::plain("rule"),
            Column::plain("last_run_at"),
            Column::plain("last_removed"),
        ],
    },
    Table {
        name: "_sqlx_migrations",
        purpose: "which migrations have run",
        columns: &[
            Column::plain("version"),
            Column::plain("description"),
            Column::plain("installed_on"),
            Column::plain("success"),
            Column::plain("checksum"),
            Column::plain("execution_time"),
        ],
    },
];

impl Category {
    fn name(self) -> &'static str {
        match self {
            Contact => "contact",
            Identifier => "identifier",
            Credential => "credential",
            Message => "message",
            Transaction => "transaction",
            Activity => "activity",
            Preference => "preference",
            Device => "device",
        }
    }
}

impl Recipient {
    fn name(self) -> &'static str {
        match self {
            Recipient::MailRelay => "the mail relay",
            Recipient::Stripe => "Stripe",
        }
    }
}

/// The record of processing (GDPR Art. 30) that the declarations make, as Markdown: one row
/// per table that holds personal data, naming its service, its purpose, its columns by
/// category, what erasure does, what the export leaves out, and who else receives it; then
/// the time limits for erasure (Art. 30(1)(f)), one row per retention rule, in the rule's own
/// words (`PersonalData::retention`). PRIVACY.md holds this text (`pexper-admin privacy
/// processing`), checked by a test.
pub fn processing_record(
    services: &[(&str, &[Table])],
    rules: &[crate::personal_data::RetentionRule],
) -> String {
    let mut out = String::from(
        "| table | purpose | personal data | on erasure | not in the export | also received by |\n\
         |---|---|---|---|---|---|\n",
    );
    for (service, tables) in services {
        for table in *tables {
            let personal: Vec<&Column> = table
                .columns
                .iter()
                .filter(|c| c.personal.is_some())
                .collect();
            if personal.is_empty() {
                continue;
            }
            let by_category = group(&personal, |c| c.personal.map(Category::name));
            let on_erasure = group(&personal, |c| match c.on_erasure {
                OnErasure::Deleted => Some("deleted"),
                OnErasure::Unlinked => Some("unlinked"),
                OnErasure::Kept(why) => Some(why),
                OnErasure::NotApplicable => None,
            });
            let not_exported = group(&personal, |c| match c.export {
                Export::Excluded(why) => Some(why),
                _ => None,
            });
            let mut recipients: Vec<&str> = personal
                .iter()
                .flat_map(|c| c.recipients.iter().map(|r| r.name()))
                .collect();
            recipients.sort_unstable();
            recipients.dedup();
            out.push_str(&format!(
                "| `{}` ({service}) | {} | {} | {} | {} | {} |\n",
                table.name,
                table.purpose,
                by_category,
                on_erasure,
                if not_exported.is_empty() {
                    "—".into()
                } else {
                    not_exported
                },
                if recipients.is_empty() {
                    "—".into()
                } else {
                    recipients.join(", ")
                },
            ));
        }
    }
    out.push_str(
        "\n| retention rule | what it removes, and when |\n\
         |---|---|\n",
    );
    for rule in rules {
        out.push_str(&format!("| `{}` | {} |\n", rule.name, rule.keeps));
    }
    out
}

/// `label: `a`, `b`; other: `c`` for the columns that have a label, in first-seen order.
fn group<'a>(columns: &[&'a Column], label: impl Fn(&Column) -> Option<&'a str>) -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for column in columns {
        let Some(label) = label(column) else { continue };
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, names)) => names.push(column.name),
            None => groups.push((label, vec![column.name])),
        }
    }
    groups
        .iter()
        .map(|(label, names)| {
            let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("{label}: {}", names.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
