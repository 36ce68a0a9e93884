//! Both emulators, started together, and the connector settings that point Tandem at them.

use serde_json::{json, Value};
use tandem::sim::jira::JiraSim;
use tandem::sim::salesforce::{SalesforceSim, ORG_ID};
use tempfile::TempDir;

pub const JIRA_SECRET: &str = "jira-webhook-secret";
pub const SF_TOKEN: &str = "sf-path-token";

pub struct Sims {
    pub jira: JiraSim,
    pub sf: SalesforceSim,
}

impl Sims {
    pub async fn start() -> Sims {
        Sims {
            jira: JiraSim::start(Default::default()).await.unwrap(),
            sf: SalesforceSim::start(Default::default()).await.unwrap(),
        }
    }

    pub async fn stop(self) {
        self.jira.stop().await;
        self.sf.stop().await;
    }

    /// Connectors for both emulators (secrets in files), then `extra`.
    pub fn config(&self, dir: &TempDir, extra: &str) -> String {
        let secret = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, value).unwrap();
            path.display().to_string()
        };
        format!(
            r#"
[connectors.jira]
kind = "jira"
base_url = "{jira}"
auth = {{ method = "basic", email = "sim@example.com", api_token = {{ file = "{jira_token}" }} }}
webhook_secret = {{ file = "{jira_secret}" }}
[connectors.jira.limits]
requests_per_second = 1000
timeout = "5s"

[connectors.salesforce]
kind = "salesforce"
base_url = "{sf}"
auth = {{ method = "client_credentials", client_id = "sim-client", client_secret = {{ file = "{sf_secret}" }} }}
organization_id = "{org}"
webhook_secret = {{ file = "{sf_token}" }}
[connectors.salesforce.limits]
requests_per_second = 1000
daily_budget = 100000
timeout = "5s"
probe_after = "300ms"
{extra}
"#,
            jira = self.jira.base_url(),
            jira_token = secret("jira-token", "sim-token"),
            jira_secret = secret("jira-secret", JIRA_SECRET),
            sf = self.sf.base_url(),
            sf_secret = secret("sf-secret", "sim-secret"),
            org = ORG_ID,
            sf_token = secret("sf-token", SF_TOKEN),
        )
    }

    pub async fn create_issue(&self, summary: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/rest/api/3/issue", self.jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"))
            .json(&json!({"fields": {
                "project": {"key": "SUP"},
                "issuetype": {"name": "Task"},
                "summary": summary,
            }}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}
