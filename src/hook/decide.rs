//! Decide owns what one firing alert may make the kill switch do: revoke an
//! agent the operator's inventory lists, by its exact id, with the
//! credentials the inventory dedicates to it — or nothing, with the reason.
//! What the alert's events claimed (their agent, their credential) only
//! picks which inventory entry is named; it never supplies an argument.

use super::WebhookAlert;
use crate::detect::policy::Policy;

/// What the hook does for one firing alert.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the command with `-- agent credentials…`.
    Revoke {
        agent: String,
        credentials: Vec<String>,
    },
    /// Run nothing; recorded as `declined: <reason>`.
    Decline(String),
}

/// An inventory id the command may receive as one argument: not an option,
/// no control characters, nothing invisible that could make it print as
/// another id.
fn passable(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('-')
        && !id
            .chars()
            .any(|c| c.is_control() || crate::decode::fields::is_deceptive(c))
}

/// Decides from the alert's own `agent_id` annotation (the exact id, where
/// the `agent` label is sanitised for display) and the inventory alone.
pub fn decide(alert: &WebhookAlert, policy: &Policy) -> Decision {
    if alert
        .annotations
        .get("alert_id")
        .is_none_or(|id| id.is_empty())
    {
        return Decision::Decline(
            "the alert carries no alert_id annotation: it is not agentaudit's, and a repeat \
             could not be told from a new alert"
                .into(),
        );
    }
    let exact = alert.annotations.get("agent_id").filter(|a| !a.is_empty());
    let Some(agent_id) = exact else {
        return Decision::Decline(
            if alert.labels.get("agent").is_some_and(|a| !a.is_empty()) {
                "the alert carries no agent_id annotation; the agent label is sanitised for \
             display and is never acted on"
                    .into()
            } else {
                "the alert names no agent".into()
            },
        );
    };
    if let Some(label) = alert.labels.get("agent")
        && *label != crate::detect::labels::sanitise(agent_id)
    {
        return Decision::Decline(format!(
            "the agent label {label:?} is not the display form of the agent_id annotation {agent_id:?}"
        ));
    }
    let Some(agent) = policy.agents.get(agent_id.as_str()) else {
        return Decision::Decline(format!(
            "agent {agent_id:?} is not in the inventory (unregistered, a look-alike, or a \
             sanitised name): only an inventory id, exactly, is acted on"
        ));
    };
    let mut credentials: Vec<String> = agent.credentials.iter().cloned().collect();
    credentials.sort_unstable();
    if credentials.is_empty() {
        return Decision::Decline(format!(
            "the inventory lists no credentials for agent {agent_id:?}"
        ));
    }
    if let Some(bad) = std::iter::once(&agent.id)
        .chain(&credentials)
        .find(|id| !passable(id))
    {
        return Decision::Decline(format!(
            "inventory id {bad:?} cannot be passed as an argument (it starts with '-' or holds \
             control or invisible characters)"
        ));
    }
    Decision::Revoke {
        agent: agent.id.clone(),
        credentials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVENTORY: &str = "\
[[agents]]
id = \"support-bot\"
business_owner = \"x\"
technical_owner = \"y\"
environments = [\"production\"]
review_by = \"2099-01-01\"
credentials = [\"cred-support-prod\"]

[[agents]]
id = \"report_bot\"
business_owner = \"x\"
technical_owner = \"y\"
environments = [\"production\"]
review_by = \"2099-01-01\"
credentials = [\"cred-report\"]

[[agents]]
id = \"ops-bot\"
business_owner = \"x\"
technical_owner = \"y\"
environments = [\"production\"]
review_by = \"2099-01-01\"
credentials = [\"cred-ops-prod\"]

[[agents]]
id = \"nobody-bot\"
business_owner = \"x\"
technical_owner = \"y\"
environments = [\"production\"]
review_by = \"2099-01-01\"
";

    fn alert(label: Option<&str>, exact: Option<&str>, credential: &str) -> WebhookAlert {
        let mut labels = std::collections::BTreeMap::new();
        if let Some(l) = label {
            labels.insert("agent".to_owned(), l.to_owned());
        }
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert("alert_id".to_owned(), "a1".to_owned());
        annotations.insert("credential_id".to_owned(), credential.to_owned());
        if let Some(e) = exact {
            annotations.insert("agent_id".to_owned(), e.to_owned());
        }
        WebhookAlert {
            status: "firing".into(),
            labels,
            annotations,
            starts_at: String::new(),
            fingerprint: String::new(),
        }
    }

    fn declined(d: Decision) -> String {
        match d {
            Decision::Decline(why) => why,
            other => panic!("acted: {other:?}"),
        }
    }

    /// A forged event named support-bot and ops-bot's credential: the hook
    /// used to revoke support-bot with ops-bot's credential.
    #[test]
    fn the_credential_comes_from_the_inventory_never_from_the_alert() {
        let p = Policy::parse(INVENTORY).unwrap();
        assert_eq!(
            decide(
                &alert(Some("support-bot"), Some("support-bot"), "cred-ops-prod"),
                &p
            ),
            Decision::Revoke {
                agent: "support-bot".into(),
                credentials: vec!["cred-support-prod".into()],
            }
        );
        let why = declined(decide(
            &alert(Some("nobody-bot"), Some("nobody-bot"), ""),
            &p,
        ));
        assert!(why.contains("no credentials"), "{why}");
    }

    /// "report bot" is sanitised to `report_bot` for the label; the hook
    /// used to revoke the registered report_bot.
    #[test]
    fn a_sanitised_or_unregistered_name_is_declined() {
        let p = Policy::parse(INVENTORY).unwrap();
        let why = declined(decide(
            &alert(Some("report_bot"), Some("report bot"), ""),
            &p,
        ));
        assert!(why.contains("not in the inventory"), "{why}");
        let why = declined(decide(&alert(Some("report_bot"), None, ""), &p));
        assert!(why.contains("never acted on"), "{why}");
        // A look-alike: Cyrillic е, and a tag character after the name.
        for fake in ["support-bоt", "support-bot\u{E0020}", "--all"] {
            let label = crate::detect::labels::sanitise(fake);
            let why = declined(decide(&alert(Some(&label), Some(fake), ""), &p));
            assert!(why.contains("not in the inventory"), "{fake:?}: {why}");
        }
        // A label that is not the annotation's display form.
        let why = declined(decide(&alert(Some("ops-bot"), Some("support-bot"), ""), &p));
        assert!(why.contains("display form"), "{why}");
        // Tenant-wide, and not agentaudit's.
        assert!(declined(decide(&alert(None, None, ""), &p)).contains("names no agent"));
        let mut foreign = alert(Some("ops-bot"), Some("ops-bot"), "");
        foreign.annotations.remove("alert_id");
        assert!(declined(decide(&foreign, &p)).contains("no alert_id"));
    }

    #[test]
    fn an_inventory_id_that_reads_as_an_option_is_not_passed() {
        let p = Policy::parse(&INVENTORY.replace("cred-ops-prod", "--revoke-every-key")).unwrap();
        let why = declined(decide(&alert(Some("ops-bot"), Some("ops-bot"), ""), &p));
        assert!(why.contains("cannot be passed"), "{why}");
    }
}
