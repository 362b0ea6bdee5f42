//! The window: first-run consent, then Workflows, Providers & keys, Privacy, Licence and Data.
//! Every action goes through the same core the command line uses; the UI only shows it. The
//! key fields are password fields: a key never appears in the UI (or its accessibility tree).

use std::collections::BTreeMap;

use eframe::egui::{self, Response, RichText, TextEdit, Ui};
use secrecy::SecretString;
use serde_json::json;

use crate::egress::Egress;
use crate::license::{self, Status};
use crate::providers::Provider;
use crate::secrets::Keys;
use crate::store::{Dirs, Settings, Workflow};
use crate::telemetry::{self, Level, Telemetry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Workflows,
    Providers,
    Privacy,
    Licence,
    Data,
}

pub struct PexperApp {
    dirs: Dirs,
    settings: Settings,
    keys: Keys,
    forced_off: bool,
    offline_flag: bool,
    telemetry: Telemetry,
    screen: Screen,
    workflows: Vec<Workflow>,
    editing: Workflow,
    output: String,
    key_inputs: BTreeMap<&'static str, String>,
    /// Which providers have a key, read from the store once rather than on every frame (a
    /// keychain lookup is a round trip to another process); `None` after any change.
    saved_keys: Option<BTreeMap<&'static str, bool>>,
    passphrase_input: String,
    licence_input: String,
    licence_status: String,
    message: String,
    confirm_delete: bool,
}

impl std::fmt::Debug for PexperApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PexperApp")
            .field("screen", &self.screen)
            .finish_non_exhaustive()
    }
}

fn new_workflow() -> Workflow {
    Workflow {
        id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        name: "New workflow".into(),
        provider: Provider::Ollama,
        model: "llama3.2".into(),
        prompt: String::new(),
    }
}

/// A text field with a label that screen readers (and the tests) find it by.
fn field(ui: &mut Ui, label: &str, edit: TextEdit<'_>) -> Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(edit).labelled_by(l.id)
    })
    .inner
}

impl PexperApp {
    pub fn new(
        dirs: Dirs,
        keys: Keys,
        forced_off: bool,
        offline_flag: bool,
    ) -> anyhow::Result<Self> {
        let settings = Settings::load(&dirs)?;
        let telemetry = Telemetry::new(&dirs, &settings, forced_off);
        let workflows = Workflow::list(&dirs)?;
        let editing = workflows.first().cloned().unwrap_or_else(new_workflow);
        let licence_input = settings.license.clone().unwrap_or_default();
        Ok(Self {
            dirs,
            settings,
            keys,
            forced_off,
            offline_flag,
            telemetry,
            screen: Screen::Workflows,
            workflows,
            editing,
            output: String::new(),
            key_inputs: BTreeMap::new(),
            saved_keys: None,
            passphrase_input: String::new(),
            licence_input,
            licence_status: String::new(),
            message: String::new(),
            confirm_delete: false,
        })
    }

    fn egress(&self) -> Egress {
        Egress::new(
            self.dirs.network_log(),
            self.offline_flag || self.settings.offline,
        )
    }

    fn save_settings(&mut self) {
        if let Err(e) = self.settings.save(&self.dirs) {
            self.message = format!("Could not save settings: {e}");
        }
        self.telemetry.reconfigure(&self.settings, self.forced_off);
    }

    /// A usage event, through the gate: queued only at `all`, only if the schema allows it.
    fn event(&self, name: &str, props: serde_json::Value) {
        if let serde_json::Value::Object(props) = props {
            self.telemetry.record(name, props);
        }
    }

    /// Sets the level; `all` needs the server's schema (and records consent to its version).
    fn choose(&mut self, level: Level) {
        let mut level = level;
        if level == Level::All {
            match telemetry::fetch_schema(&self.dirs, &self.settings, &self.egress()) {
                Ok(schema) => {
                    self.settings.consented_schema_version =
                        telemetry::schema_version(Some(&schema))
                }
                Err(e) => {
                    self.message = format!(
                        "Could not fetch what we collect ({e}); crash reports only for now."
                    );
                    level = Level::Crash;
                }
            }
        }
        self.settings.telemetry = Some(level);
        self.save_settings();
        if level == Level::All {
            self.event("telemetry.level_changed", json!({"level": "all"}));
        }
    }

    /// Asked at first run, and again when the schema consented to is not the current one.
    fn needs_consent(&self) -> bool {
        !self.forced_off
            && match self.settings.telemetry {
                None => true,
                Some(Level::All) => {
                    self.telemetry.schema_version() != self.settings.consented_schema_version
                }
                Some(_) => false,
            }
    }

    /// What a launch does before the first frame: nothing at all unless telemetry is on. Then
    /// the schema is refreshed (a new version asks for consent again, and only crash reports
    /// go until then) and the outbox, crash reports from an earlier run included, is sent as
    /// far as the level allows.
    pub fn launch(&mut self) {
        if self.telemetry.level() == Level::Off {
            return;
        }
        let egress = self.egress();
        if self.settings.telemetry == Some(Level::All) {
            // Unreachable server: the cached schema stands.
            let _ = telemetry::fetch_schema(&self.dirs, &self.settings, &egress);
            self.telemetry.reconfigure(&self.settings, self.forced_off);
        }
        self.event("app.started", json!({}));
        if let Err(e) = telemetry::send(&self.dirs, &self.settings, self.telemetry.level(), &egress)
        {
            self.message = format!("Queued reports were not sent: {e}");
        }
    }

    pub fn ui(&mut self, ui: &mut Ui) {
        if !self.message.is_empty() {
            ui.label(RichText::new(&self.message).italics());
        }
        if self.needs_consent() {
            self.consent(ui);
            return;
        }
        ui.horizontal(|ui| {
            for (screen, label) in [
                (Screen::Workflows, "Workflows"),
                (Screen::Providers, "Providers & keys"),
                (Screen::Privacy, "Privacy"),
                (Screen::Licence, "Licence"),
                (Screen::Data, "Data"),
            ] {
                let was = self.screen;
                if ui
                    .selectable_value(&mut self.screen, screen, label)
                    .clicked()
                    && was != screen
                {
                    let feature = match screen {
                        Screen::Workflows => Some("workflow_editor"),
                        Screen::Providers => Some("providers"),
                        Screen::Privacy => Some("privacy_settings"),
                        Screen::Licence => Some("license"),
                        Screen::Data => None, // the export button says more
                    };
                    if let Some(feature) = feature {
                        self.event("feature.used", json!({"feature": feature}));
                    }
                }
            }
        });
        ui.separator();
        egui::ScrollArea::vertical().show(ui, |ui| match self.screen {
            Screen::Workflows => self.workflows_screen(ui),
            Screen::Providers => self.providers_screen(ui),
            Screen::Privacy => self.privacy_screen(ui),
            Screen::Licence => self.licence_screen(ui),
            Screen::Data => self.data_screen(ui),
        });
    }

    fn consent(&mut self, ui: &mut Ui) {
        if self.settings.telemetry.is_none() {
            ui.heading("Welcome to Pexper");
            ui.label(
                "Your workflows, keys and results stay on this device. May Pexper send anything to us?",
            );
            ui.label("Nothing has been sent, and nothing will be until you choose. You can change this any time under Privacy.");
        } else {
            ui.heading("What Pexper collects has changed");
            ui.label(format!(
                "The list of anonymous usage events is now version {}; you agreed to version {}. Until you choose again, only crash reports are sent.",
                self.telemetry.schema_version().map_or("?".into(), |v| v.to_string()),
                self.settings.consented_schema_version.map_or("?".into(), |v| v.to_string()),
            ));
        }
        if ui.button("Keep everything off").clicked() {
            self.choose(Level::Off);
        }
        if ui.button("Send crash reports only").clicked() {
            self.choose(Level::Crash);
        }
        if ui
            .button("Send crash reports and anonymous usage")
            .clicked()
        {
            self.choose(Level::All);
        }
    }

    fn workflows_screen(&mut self, ui: &mut Ui) {
        ui.horizontal_wrapped(|ui| {
            for w in self.workflows.clone() {
                if ui
                    .selectable_label(self.editing.id == w.id, &w.name)
                    .clicked()
                {
                    self.editing = w;
                    self.output.clear();
                }
            }
            if ui.button("New workflow").clicked() {
                self.editing = new_workflow();
            }
        });
        ui.separator();
        field(ui, "Name", TextEdit::singleline(&mut self.editing.name));
        egui::ComboBox::from_label("Provider")
            .selected_text(self.editing.provider.name())
            .show_ui(ui, |ui| {
                for p in Provider::ALL {
                    ui.selectable_value(&mut self.editing.provider, p, p.name());
                }
            });
        field(ui, "Model", TextEdit::singleline(&mut self.editing.model));
        field(ui, "Prompt", TextEdit::multiline(&mut self.editing.prompt));
        ui.label(
            RichText::new(format!("This run {}", self.editing.provider.destination())).strong(),
        );
        ui.horizontal(|ui| {
            if ui.button("Save").clicked() {
                self.save_workflow();
            }
            if ui.button("Run").clicked() {
                self.run_workflow();
            }
        });
        if !self.output.is_empty() {
            ui.separator();
            ui.label(&self.output);
        }
    }

    fn save_workflow(&mut self) {
        match self.editing.save(&self.dirs) {
            Ok(()) => {
                self.workflows = Workflow::list(&self.dirs).unwrap_or_default();
                self.message = "Saved on this device.".into();
            }
            Err(e) => self.message = format!("Could not save: {e}"),
        }
    }

    fn run_workflow(&mut self) {
        let run = crate::providers::run_workflow(
            &self.editing,
            &self.settings,
            |provider| self.keys.key(provider),
            &self.egress(),
            &self.telemetry,
        );
        self.output = match run {
            Ok(reply) => reply,
            Err(e) => format!("Not run: {e:#}"),
        };
    }

    fn providers_screen(&mut self, ui: &mut Ui) {
        ui.label(format!("Keys are kept in: {}", self.keys.backend()));
        ui.label("A key is only ever sent to its own provider, straight from this device.");
        let Some(store) = self.keys.store() else {
            self.unlock_form(ui);
            return;
        };
        let cloud = || Provider::ALL.into_iter().filter(|p| !p.is_local());
        let saved_keys = self.saved_keys.get_or_insert_with(|| {
            cloud()
                .map(|p| (p.name(), matches!(store.get(p.name()), Ok(Some(_)))))
                .collect()
        });
        let mut changed = false;
        for p in cloud() {
            let label = format!("{} API key", p.name());
            let saved = saved_keys.get(p.name()).copied().unwrap_or(false);
            let input = self.key_inputs.entry(p.name()).or_default();
            field(ui, &label, TextEdit::singleline(input).password(true));
            ui.horizontal(|ui| {
                ui.label(if saved { "saved" } else { "not set" });
                if ui.button(format!("Save {} key", p.name())).clicked() && !input.is_empty() {
                    let value = SecretString::from(std::mem::take(input));
                    if let Err(e) = store.set(p.name(), &value) {
                        self.message = format!("Could not save the key: {e}");
                    }
                    changed = true;
                }
                if saved && ui.button(format!("Remove {} key", p.name())).clicked() {
                    if let Err(e) = store.delete(p.name()) {
                        self.message = format!("Could not remove the key: {e}");
                    }
                    changed = true;
                }
            });
        }
        if changed {
            self.saved_keys = None;
        }
        ui.separator();
        ui.label("Local models: nothing leaves this device.");
        let mut changed = field(
            ui,
            "Ollama URL",
            TextEdit::singleline(&mut self.settings.ollama_url),
        )
        .lost_focus();
        changed |= field(
            ui,
            "LM Studio URL",
            TextEdit::singleline(&mut self.settings.lmstudio_url),
        )
        .lost_focus();
        if changed {
            self.save_settings();
        }
    }

    /// The passphrase for the key file: typed into a password field, used once to derive the
    /// file key, then wiped. A new file asks for a passphrase long enough to resist guessing.
    fn unlock_form(&mut self, ui: &mut Ui) {
        let new = self.keys.is_new_file();
        ui.label(if new {
            "Choose a passphrase for a new key file (at least 12 characters). It is never saved; without it the keys cannot be read."
        } else {
            "Type the passphrase of your key file to use your keys."
        });
        field(
            ui,
            "Passphrase",
            TextEdit::singleline(&mut self.passphrase_input).password(true),
        );
        let button = if new {
            "Create key file"
        } else {
            "Unlock key file"
        };
        if ui.button(button).clicked() {
            let passphrase = SecretString::from(std::mem::take(&mut self.passphrase_input));
            self.saved_keys = None;
            self.message = match self.keys.unlock(&passphrase) {
                Ok(()) => "Key file unlocked.".into(),
                Err(e) => format!("Not unlocked: {e}."),
            };
        }
    }

    fn privacy_screen(&mut self, ui: &mut Ui) {
        ui.heading("What leaves this device");
        if self.forced_off {
            ui.label("Telemetry is forced off (DO_NOT_TRACK, CI or --disable-telemetry).");
        }
        let chosen = self.settings.telemetry.unwrap_or(Level::Off);
        for (level, label) in [
            (Level::Off, "Off: nothing is sent"),
            (Level::Crash, "Crash reports only"),
            (Level::All, "Crash reports and anonymous usage"),
        ] {
            if ui.radio(chosen == level, label).clicked() && chosen != level {
                self.choose(level);
            }
        }
        let mut offline = self.settings.offline;
        if ui
            .checkbox(&mut offline, "Offline: block every request")
            .changed()
        {
            self.settings.offline = offline;
            if offline {
                self.event("feature.used", json!({"feature": "offline_mode"}));
            }
            self.save_settings();
        }
        ui.hyperlink_to(
            "What we collect (the published schema)",
            format!("{}/v1/analytics/schema", self.settings.server_url),
        );
        ui.hyperlink_to(
            "Ask us for your data, or to delete it",
            "https://pexper.com/privacy",
        );

        ui.separator();
        ui.label(RichText::new("Waiting to be sent (exactly these bytes)").strong());
        let outbox = telemetry::outbox(&self.dirs).unwrap_or_default();
        if outbox.is_empty() {
            ui.label("Nothing.");
        }
        for item in &outbox {
            ui.label(format!("{} — {} bytes", item.kind, item.body.len()));
            ui.label(RichText::new(String::from_utf8_lossy(&item.body)).monospace());
        }
        ui.horizontal(|ui| {
            if ui.button("Delete queued data").clicked() {
                telemetry::purge(&self.dirs);
            }
            if ui.button("Send now").clicked() {
                let level = self.telemetry.level();
                self.message =
                    match telemetry::send(&self.dirs, &self.settings, level, &self.egress()) {
                        Ok(n) => format!("Sent {n}."),
                        Err(e) => format!("Not sent: {e}"),
                    };
            }
        });
        ui.separator();
        ui.label(RichText::new("Network log").strong());
        for entry in self.egress().log().iter().rev().take(50) {
            ui.label(format!(
                "{:?} {} {}{} — {}",
                entry.purpose, entry.method, entry.host, entry.path, entry.outcome
            ));
        }
    }

    fn licence_screen(&mut self, ui: &mut Ui) {
        ui.label("Your licence is checked on this device: nothing is sent.");
        match license::public_key(self.settings.license_public_key.as_deref()) {
            Some(key) => {
                ui.label(format!(
                    "Checked against the key {}",
                    pexper_wire::license::key_id(&key)
                ));
            }
            None => {
                ui.label("This build has no key to check licences against.");
                if ui.button("Get the public key from the server").clicked() {
                    match license::fetch_public_key(&self.settings.server_url, &self.egress()) {
                        Ok(key) => {
                            self.settings.license_public_key = Some(key);
                            self.save_settings();
                            self.message = "Got the public key.".into();
                        }
                        Err(e) => self.message = format!("Could not get the key: {e}"),
                    }
                }
            }
        }
        field(
            ui,
            "Licence key",
            TextEdit::multiline(&mut self.licence_input),
        );
        if ui.button("Verify on this device").clicked() {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let key = license::public_key(self.settings.license_public_key.as_deref());
            let check = license::check(
                &self.licence_input,
                key.as_ref(),
                now,
                self.settings.last_seen,
            );
            self.licence_status = match &check.status {
                Status::Valid(c) => format!("Valid: {} licence, issued {}", c.product, c.issued_at),
                Status::Expired(c) => format!("Expired ({}): Pexper keeps working", c.product),
                Status::Invalid(e) => format!("Not valid: {e}"),
                Status::NoKey => "No key to check against in this build.".into(),
            };
            if check.clock_went_back {
                self.licence_status
                    .push_str(" — this device's clock seems to have gone back.");
            }
            if matches!(check.status, Status::Valid(_) | Status::Expired(_)) {
                self.settings.license = Some(self.licence_input.trim().to_owned());
            }
            self.settings.last_seen = self.settings.last_seen.max(now);
            self.save_settings();
        }
        if !self.licence_status.is_empty() {
            ui.label(&self.licence_status);
        }
    }

    fn data_screen(&mut self, ui: &mut Ui) {
        ui.label(format!("Your files: {}", self.dirs.data.display()));
        if ui.button("Export my data (without keys)").clicked() {
            self.event("feature.used", json!({"feature": "data_export"}));
            let export = json!({"settings": self.settings, "workflows": self.workflows});
            let path = self.dirs.data.join("pexper-export.json");
            self.message = match crate::store::write_json(&path, &export) {
                Ok(()) => format!("Exported to {}", path.display()),
                Err(e) => format!("Could not export: {e}"),
            };
        }
        if !self.confirm_delete {
            if ui.button("Delete all local data").clicked() {
                self.confirm_delete = true;
            }
        } else {
            ui.label(
                "This deletes your workflows, settings, keys and queued reports from this device.",
            );
            if ui.button("Yes, delete everything").clicked() {
                let names = Provider::ALL.map(Provider::name);
                self.saved_keys = None;
                if let Err(e) = self.keys.erase_all(&names) {
                    self.message = format!("Could not delete the keys: {e}");
                    return;
                }
                let _ = std::fs::remove_dir_all(&self.dirs.data);
                let _ = std::fs::remove_dir_all(&self.dirs.config);
                let _ = self.dirs.ensure();
                self.settings = Settings::default();
                self.telemetry.reconfigure(&self.settings, self.forced_off);
                self.workflows.clear();
                self.editing = new_workflow();
                self.output.clear();
                self.licence_input.clear();
                self.licence_status.clear();
                self.confirm_delete = false;
                self.message = "Everything on this device is deleted.".into();
            }
        }
    }
}

impl PexperApp {
    /// On a normal exit: the session's length, for the median the reports show (sent with the
    /// next launch's batch, like everything else, only at `all`).
    pub fn exit(&mut self) {
        self.event(
            "app.exited",
            json!({"duration_s": self.telemetry.session_seconds()}),
        );
    }
}

impl eframe::App for PexperApp {
    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.exit();
    }

    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        egui::CentralPanel::default().show(ui, |ui| PexperApp::ui(self, ui));
    }
}
