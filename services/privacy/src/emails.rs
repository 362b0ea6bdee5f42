//! The privacy service's emails. All transactional: they answer a request the person made.

use pexper_platform::email_template;

/// Acknowledges receipt and asks the person to confirm the request is theirs.
#[derive(Debug, Clone)]
pub struct Received {
    pub kind: String,
    pub received: String,
    pub due: String,
    pub verify_url: String,
    pub verify_by: String,
}

email_template!(
    Received,
    "privacy-received",
    Requested,
    "emails/privacy-received/subject.txt",
    "emails/privacy-received/body.txt",
    "emails/privacy-received/body.html"
);

/// Acknowledges, in one email, the requests whose acknowledgement the address's mail budget
/// held back (`jobs::send_held`), each with its own confirmation link.
#[derive(Debug, Clone)]
pub struct ReceivedHeld {
    pub requests: Vec<Received>,
}

email_template!(
    ReceivedHeld,
    "privacy-received-held",
    Requested,
    "emails/privacy-received-held/subject.txt",
    "emails/privacy-received-held/body.txt",
    "emails/privacy-received-held/body.html"
);

#[derive(Debug, Clone)]
pub struct ExportReady {
    pub url: String,
    pub expires: String,
}

email_template!(
    ExportReady,
    "privacy-export-ready",
    Requested,
    "emails/privacy-export-ready/subject.txt",
    "emails/privacy-export-ready/body.txt",
    "emails/privacy-export-ready/body.html"
);

#[derive(Debug, Clone)]
pub struct DeletionDone {
    pub received: String,
}

email_template!(
    DeletionDone,
    "privacy-deleted",
    Requested,
    "emails/privacy-deleted/subject.txt",
    "emails/privacy-deleted/body.txt",
    "emails/privacy-deleted/body.html"
);

/// An operator's answer: completed (with a note) or rejected (with the reason).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: String,
    pub received: String,
    pub completed: bool,
    pub note: String,
}

email_template!(
    Outcome,
    "privacy-outcome",
    Requested,
    "emails/privacy-outcome/subject.txt",
    "emails/privacy-outcome/body.txt",
    "emails/privacy-outcome/body.html"
);

/// Acknowledges a letter to privacy@ as a reply to it (`Re:` its subject, threaded by
/// `reply::threading`), in the letter's language, with the link that verifies it.
#[derive(Debug, Clone)]
pub struct LetterReceived {
    pub subject: String,
    pub language: &'static str,
    pub words: &'static crate::reply::Words,
    /// `Words::received_line`: when it arrived, what it asks for, when it is due.
    pub received_line: String,
    pub verify_url: String,
    pub verify_by: String,
}

email_template!(
    LetterReceived,
    "privacy-letter-received",
    Requested,
    "emails/privacy-letter-received/subject.txt",
    "emails/privacy-letter-received/body.txt",
    "emails/privacy-letter-received/body.html"
);
