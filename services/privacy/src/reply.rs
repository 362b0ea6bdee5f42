//! The acknowledgement of a letter to privacy@, written in the letter's language: its words
//! in each language we recognise (`letter::Language`), and the reply's subject and headers.

use pexper_platform::crypto::Field;
use serde::{Deserialize, Serialize};

use crate::letter::Language;
use crate::request::{Kind, PrivacyRequestId};

/// What the acknowledgement needs of the letter to reply to it, sealed under the person's key.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplyTo {
    pub message_id: Option<String>,
    pub subject: String,
}

pub fn reply_field(request: PrivacyRequestId) -> Field<'static> {
    Field {
        table: "privacy_letter",
        column: "reply_sealed",
        row: request.0,
    }
}

/// One language's words for the acknowledgement. `{received}`, `{kind}` and `{due}` in
/// `received` are filled in (`received_line`).
#[derive(Debug)]
pub struct Words {
    pub title: &'static str,
    pub greeting: &'static str,
    pub received: &'static str,
    pub confirm: &'static str,
    pub button: &'static str,
    pub paste: &'static str,
    pub next: &'static str,
    pub not_you: &'static str,
    /// The subject when the letter had none.
    pub subject: &'static str,
    /// Each kind, in the order of `Kind::ALL`.
    pub kinds: [&'static str; 8],
}

impl Words {
    pub fn of(language: Language) -> &'static Words {
        match language {
            Language::En => &EN,
            Language::De => &DE,
            Language::Fr => &FR,
            Language::Es => &ES,
            Language::It => &IT,
            Language::Nl => &NL,
            Language::Pl => &PL,
        }
    }

    /// "On 2026-12-06 we received your request for deletion of your data …".
    pub fn received_line(&self, received: &str, kind: Kind, due: &str) -> String {
        let kind = Kind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(self.kinds[0], |i| self.kinds[i]);
        self.received
            .replace("{received}", received)
            .replace("{kind}", kind)
            .replace("{due}", due)
    }
}

/// The reply's subject: `Re:` and the letter's, on one line and not too long to read.
pub fn subject(words: &Words, letter_subject: &str) -> String {
    let subject: String = letter_subject
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(150)
        .collect();
    let subject = if subject.is_empty() {
        words.subject
    } else {
        &subject
    };
    let has_re = subject
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("re:"));
    if has_re {
        subject.to_owned()
    } else {
        format!("Re: {subject}")
    }
}

/// `In-Reply-To` and `References` naming the letter, when its Message-ID is one a header can
/// carry as it is (printable ASCII, no spaces or brackets: anything else is a forgery or
/// breakage, and a header must never carry a line break).
pub fn threading(message_id: Option<&str>) -> Vec<(&'static str, String)> {
    match message_id.filter(|id| {
        !id.is_empty()
            && id.len() <= 250
            && id
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>'))
    }) {
        Some(id) => vec![
            ("In-Reply-To", format!("<{id}>")),
            ("References", format!("<{id}>")),
        ],
        None => Vec::new(),
    }
}

static EN: Words = Words {
    title: "We received your privacy request",
    greeting: "Hello,",
    received: "On {received} we received your letter asking for {kind}. We will answer by {due} at the latest.",
    confirm: "To make sure it is really you, please confirm the request by",
    button: "Confirm my request",
    paste: "Or paste this link into your browser:",
    next: "Once you confirm, we carry out your request and write to you when it is done. Nothing happens until you confirm.",
    not_you: "If you did not write to us, ignore this email and the request will lapse.",
    subject: "Your privacy request",
    kinds: [
        "access to your data",
        "a portable copy of your data",
        "deletion of your data",
        "correction of your data",
        "restriction of processing",
        "objection to processing",
        "opt-out of the sale of your data",
        "something about your data (we will read your letter in person)",
    ],
};

static DE: Words = Words {
    title: "Wir haben Ihre Datenschutzanfrage erhalten",
    greeting: "Guten Tag,",
    received: "Am {received} haben wir Ihr Schreiben erhalten: {kind}. Wir antworten spätestens bis zum {due}.",
    confirm: "Damit wir sicher sind, dass die Anfrage von Ihnen stammt, bestätigen Sie sie bitte bis zum",
    button: "Anfrage bestätigen",
    paste: "Oder kopieren Sie diesen Link in Ihren Browser:",
    next: "Sobald Sie bestätigen, bearbeiten wir Ihre Anfrage und schreiben Ihnen, wenn sie erledigt ist. Ohne Ihre Bestätigung geschieht nichts.",
    not_you: "Wenn Sie uns nicht geschrieben haben, ignorieren Sie diese E-Mail; die Anfrage verfällt dann.",
    subject: "Ihre Datenschutzanfrage",
    kinds: [
        "Auskunft über Ihre Daten",
        "eine übertragbare Kopie Ihrer Daten",
        "Löschung Ihrer Daten",
        "Berichtigung Ihrer Daten",
        "Einschränkung der Verarbeitung",
        "Widerspruch gegen die Verarbeitung",
        "kein Verkauf Ihrer Daten",
        "ein Anliegen zu Ihren Daten (wir lesen Ihr Schreiben persönlich)",
    ],
};

static FR: Words = Words {
    title: "Nous avons reçu votre demande",
    greeting: "Bonjour,",
    received: "Le {received}, nous avons reçu votre lettre : {kind}. Nous vous répondrons au plus tard le {due}.",
    confirm: "Pour nous assurer qu'elle vient bien de vous, merci de confirmer la demande avant le",
    button: "Confirmer ma demande",
    paste: "Ou collez ce lien dans votre navigateur :",
    next: "Dès votre confirmation, nous traitons votre demande et vous écrivons une fois terminée. Rien ne se passe sans votre confirmation.",
    not_you: "Si vous ne nous avez pas écrit, ignorez cet e-mail : la demande expirera.",
    subject: "Votre demande concernant vos données",
    kinds: [
        "accès à vos données",
        "une copie portable de vos données",
        "suppression de vos données",
        "rectification de vos données",
        "limitation du traitement",
        "opposition au traitement",
        "refus de la vente de vos données",
        "une question sur vos données (nous lirons votre lettre nous-mêmes)",
    ],
};

static ES: Words = Words {
    title: "Hemos recibido su solicitud",
    greeting: "Hola:",
    received: "El {received} recibimos su carta: {kind}. Le responderemos a más tardar el {due}.",
    confirm: "Para asegurarnos de que es usted, confirme la solicitud antes del",
    button: "Confirmar mi solicitud",
    paste: "O pegue este enlace en su navegador:",
    next: "Cuando la confirme, tramitaremos su solicitud y le escribiremos al terminar. No haremos nada sin su confirmación.",
    not_you: "Si no nos ha escrito, ignore este correo y la solicitud caducará.",
    subject: "Su solicitud sobre sus datos",
    kinds: [
        "acceso a sus datos",
        "una copia portable de sus datos",
        "supresión de sus datos",
        "rectificación de sus datos",
        "limitación del tratamiento",
        "oposición al tratamiento",
        "exclusión de la venta de sus datos",
        "una consulta sobre sus datos (leeremos su carta personalmente)",
    ],
};

static IT: Words = Words {
    title: "Abbiamo ricevuto la sua richiesta",
    greeting: "Buongiorno,",
    received: "Il {received} abbiamo ricevuto la sua lettera: {kind}. Risponderemo entro il {due}.",
    confirm: "Per essere certi che sia lei, confermi la richiesta entro il",
    button: "Conferma la richiesta",
    paste: "Oppure incolli questo link nel browser:",
    next: "Dopo la conferma gestiremo la richiesta e le scriveremo a lavoro concluso. Senza conferma non succede nulla.",
    not_you: "Se non ci ha scritto, ignori questa email: la richiesta scadrà.",
    subject: "La sua richiesta sui suoi dati",
    kinds: [
        "accesso ai suoi dati",
        "una copia portabile dei suoi dati",
        "cancellazione dei suoi dati",
        "rettifica dei suoi dati",
        "limitazione del trattamento",
        "opposizione al trattamento",
        "esclusione dalla vendita dei suoi dati",
        "una domanda sui suoi dati (leggeremo la sua lettera di persona)",
    ],
};

static NL: Words = Words {
    title: "We hebben uw privacyverzoek ontvangen",
    greeting: "Hallo,",
    received: "Op {received} hebben we uw brief ontvangen: {kind}. We antwoorden uiterlijk op {due}.",
    confirm: "Om zeker te weten dat u het bent, vragen we u het verzoek te bevestigen vóór",
    button: "Mijn verzoek bevestigen",
    paste: "Of plak deze link in uw browser:",
    next: "Zodra u bevestigt, voeren we uw verzoek uit en laten we u weten wanneer het klaar is. Zonder bevestiging gebeurt er niets.",
    not_you: "Heeft u ons niet geschreven? Negeer deze e-mail; het verzoek vervalt dan.",
    subject: "Uw privacyverzoek",
    kinds: [
        "inzage in uw gegevens",
        "een overdraagbare kopie van uw gegevens",
        "verwijdering van uw gegevens",
        "correctie van uw gegevens",
        "beperking van de verwerking",
        "bezwaar tegen de verwerking",
        "geen verkoop van uw gegevens",
        "een vraag over uw gegevens (we lezen uw brief zelf)",
    ],
};

static PL: Words = Words {
    title: "Otrzymaliśmy Twoje żądanie",
    greeting: "Dzień dobry,",
    received: "Dnia {received} otrzymaliśmy Twój list: {kind}. Odpowiemy najpóźniej do {due}.",
    confirm: "Aby upewnić się, że to Ty, potwierdź żądanie do",
    button: "Potwierdzam żądanie",
    paste: "Możesz też wkleić ten link do przeglądarki:",
    next: "Po potwierdzeniu zrealizujemy żądanie i napiszemy, gdy będzie gotowe. Bez potwierdzenia nic się nie stanie.",
    not_you: "Jeśli to nie Ty do nas pisałeś, zignoruj tę wiadomość, a żądanie wygaśnie.",
    subject: "Twoje żądanie dotyczące danych",
    kinds: [
        "dostęp do Twoich danych",
        "przenośna kopia Twoich danych",
        "usunięcie Twoich danych",
        "sprostowanie Twoich danych",
        "ograniczenie przetwarzania",
        "sprzeciw wobec przetwarzania",
        "rezygnacja ze sprzedaży Twoich danych",
        "sprawa dotycząca Twoich danych (przeczytamy Twój list osobiście)",
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_names_every_kind_and_fills_every_blank() {
        for language in Language::ALL {
            let words = Words::of(language);
            for (i, kind) in Kind::ALL.into_iter().enumerate() {
                let line = words.received_line("2026-12-06", kind, "2027-01-05");
                assert!(line.contains(words.kinds[i]), "{language:?} {kind:?}");
                assert!(line.contains("2026-12-06") && line.contains("2027-01-05"));
                assert!(!line.contains('{'), "{line}");
            }
        }
        assert_eq!(Kind::ALL.len(), EN.kinds.len());
    }

    #[test]
    fn the_subject_is_re_once_on_one_line() {
        assert_eq!(subject(&EN, "Delete my data"), "Re: Delete my data");
        assert_eq!(subject(&EN, "RE: Delete\r\n my data"), "RE: Delete my data");
        assert_eq!(subject(&DE, "  "), "Re: Ihre Datenschutzanfrage");
        assert_eq!(subject(&EN, &"x".repeat(1000)).chars().count(), 154);
    }

    #[test]
    fn only_a_message_id_a_header_can_carry_threads_the_reply() {
        assert_eq!(
            threading(Some("abc@mail.example")),
            vec![
                ("In-Reply-To", "<abc@mail.example>".to_owned()),
                ("References", "<abc@mail.example>".to_owned())
            ]
        );
        for bad in ["", "a\r\nBcc: x@y", "a b@c", "a>b", "é@x"] {
            assert!(threading(Some(bad)).is_empty(), "{bad:?}");
        }
        assert!(threading(None).is_empty());
    }
}
