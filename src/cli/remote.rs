//! `tandem dlq …` and `tandem flows`: the operator's commands, talking to a running daemon's
//! admin API (never to its database: the daemon owns it).

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::config::Settings;

/// Where the daemon is and how to authenticate.
#[derive(Args)]
pub struct Remote {
    /// The daemon's base URL. Default: http:// + server.listen from the configuration.
    #[arg(long, env = "TANDEM_URL", global = true)]
    pub url: Option<String>,
    /// The admin token. Default: admin.token from the configuration.
    #[arg(
        long,
        env = "TANDEM_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Default)]
pub struct Filter {
    #[arg(long)]
    pub flow: Option<String>,
    #[arg(long)]
    pub connector: Option<String>,
    /// The vendor's error code, e.g. STRING_TOO_LONG.
    #[arg(long)]
    pub code: Option<String>,
    /// RFC 3339 time or epoch ms: failed at or after.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time or epoch ms: failed before.
    #[arg(long)]
    pub until: Option<String>,
}

impl Filter {
    /// The filters given, by their API names.
    fn given(&self) -> Vec<(&'static str, &String)> {
        [
            ("flow", &self.flow),
            ("connector", &self.connector),
            ("code", &self.code),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
        .collect()
    }
}

#[derive(Subcommand)]
pub enum Dlq {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// open (default), replayed, discarded, superseded or any.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one dead letter with its payload.
    Show { id: u64 },
    /// Replay one dead letter, or with --all every open one matching the filter.
    Replay {
        id: Option<u64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Discard a dead letter.
    Discard { id: u64 },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(remote: &Remote, settings: &Settings) -> anyhow::Result<Client> {
        let base = remote
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{}", settings.server.listen))
            .trim_end_matches('/')
            .to_string();
        let token = match &remote.token {
            Some(token) => token.clone(),
            None => settings
                .admin
                .token
                .as_ref()
                .map(|t| t.expose().to_string())
                .ok_or_else(|| {
                    anyhow!("no admin token: pass --token, set TANDEM_ADMIN_TOKEN, or configure admin.token")
                })?,
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Client { http, base, token })
    }

    /// For calls that do their work before answering (a reconcile lists both sides).
    fn patient(mut self) -> anyhow::Result<Client> {
        self.http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3600))
            .build()?;
        Ok(self)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the daemon at {}: {}",
                self.base,
                e.without_url()
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or(text.as_str())
            .to_string();
        match status.as_u16() {
            401 => bail!(
                "the daemon refused the admin token (401): check --token / TANDEM_ADMIN_TOKEN"
            ),
            code => bail!("{code}: {message}"),
        }
    }
}

fn query(filter: &Filter, extra: &[(&str, String)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in filter.given() {
        query.append_pair(name, value);
    }
    for (name, value) in extra {
        query.append_pair(name, value);
    }
    query.finish()
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fixed-width columns; the last one is cut so a row stays on one line.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, value) in row.iter().enumerate() {
            widths[i] = widths[i].max(value.chars().count().min(60));
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, values: Vec<String>| {
        let cells: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let v: String = v.chars().take(60).collect();
                format!("{v:<width$}", width = widths[i])
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    };
    line(&mut out, headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(&mut out, row.clone());
    }
    out
}

pub async fn dlq(command: Dlq, remote: Remote, settings: Settings) -> anyhow::Result<()> {
    let client = Client::new(&remote, &settings)?;
    let body = match &command {
        Dlq::List {
            filter,
            status,
            limit,
        } => {
            let mut extra = vec![("limit", limit.to_string())];
            if let Some(status) = status {
                extra.push(("status", status.clone()));
            }
            client
                .call(
                    reqwest::Method::GET,
                    &format!("/dead-letters?{}", query(filter, &extra)),
                    None,
                )
                .await?
        }
        Dlq::Show { id } => {
            client
                .call(reqwest::Method::GET, &format!("/dead-letters/{id}"), None)
                .await?
        }
        Dlq::Replay { id: Some(id), .. } => {
            client
                .call(
                    reqwest::Method::POST,
                    &format!("/dead-letters/{id}/replay"),
                    None,
                )
                .await?
        }
        Dlq::Replay {
            id: None,
            all: true,
            filter,
        } => {
            let body: serde_json::Map<String, Value> = filter
                .given()
                .into_iter()
                .map(|(name, value)| (name.to_string(), json!(value)))
                .collect();
            client
                .call(
                    reqwest::Method::POST,
                    "/dead-letters/replay",
                    Some(Value::Object(body)),
                )
                .await?
        }
        Dlq::Replay {
            id: None,
            all: false,
            ..
        } => {
            bail!("name a dead letter to replay, or pass --all (with filters) to replay every open one")
        }
        Dlq::Discard { id } => {
            client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/dead-letters/{id}"),
                    None,
                )
                .await?;
            json!({ "discarded": id })
        }
    };
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    match command {
        Dlq::List { .. } => {
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no dead letters match");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    vec![
                        cell(&i["id"]),
                        cell(&i["status"]),
                        cell(&i["flow"]),
                        format!(
                            "{} {} {}",
                            cell(&i["source_connector"]),
                            cell(&i["object"]),
                            cell(&i["record_id"])
                        ),
                        cell(&i["connector"]),
                        cell(&i["vendor_code"]),
                        cell(&i["attempts"]),
                        cell(&i["last_failed_at"]),
                        cell(&i["vendor_message"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "STATUS",
                        "FLOW",
                        "RECORD",
                        "REFUSED BY",
                        "CODE",
                        "ATTEMPTS",
                        "LAST FAILED",
                        "MESSAGE"
                    ],
                    &rows
                )
            );
            if let Some(next) = body["next_cursor"].as_str() {
                println!("(more: the API's next_cursor is {next})");
            }
        }
        Dlq::Show { .. } => {
            for key in [
                "id",
                "status",
                "flow",
                "source_connector",
                "object",
                "record_id",
                "connector",
                "operation",
                "http_status",
                "vendor_code",
                "vendor_message",
                "attempts",
                "first_failed_at",
                "last_failed_at",
                "change_id",
                "replay_change_id",
            ] {
                println!("{key:<18}{}", cell(&body[key]));
            }
            println!(
                "payload\n{}",
                serde_json::to_string_pretty(&body["payload"])?
            );
        }
        Dlq::Replay { id: Some(id), .. } => println!(
            "dead letter {id} replayed as change {}: the record goes through the engine again",
            cell(&body["change_id"])
        ),
        Dlq::Replay { .. } => println!(
            "{} dead letters replayed{}",
            cell(&body["replayed"]),
            if body["more"] == json!(true) {
                " (more match: run again)"
            } else {
                ""
            }
        ),
        Dlq::Discard { id } => println!("dead letter {id} discarded"),
    }
    Ok(())
}

pub async fn flows(remote: Remote, settings: Settings) -> anyhow::Result<()> {
    let client = Client::new(&remote, &settings)?;
    let body = client
        .call(reqwest::Method::GET, "/flows", None)
        .await
        .context("listing flows")?;
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = body["flows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let side = |s: &str| {
                let side = &f["sides"][s];
                format!(
                    "{} {}: {} pending, {} in flight, breaker {}",
                    cell(&side["connector"]),
                    cell(&side["object"]),
                    cell(&side["pending"]),
                    cell(&side["in_flight"]),
                    cell(&side["breaker"]),
                )
            };
            let outcomes = &f["outcomes_since_start"];
            let last_run = match &f["last_run"] {
                Value::Null => "-".to_string(),
                run => format!(
                    "#{} {}: {} seen, {} written, {} skipped, {} failed, {} calls",
                    cell(&run["id"]),
                    cell(&run["status"]),
                    cell(&run["seen"]),
                    cell(&run["written"]),
                    cell(&run["skipped"]),
                    cell(&run["failed"]),
                    cell(&run["api_calls"]),
                ),
            };
            vec![
                cell(&f["name"]),
                match &f["mode"] {
                    Value::String(mode) => mode.clone(),
                    other => other["scheduled"]
                        .as_object()
                        .and_then(|s| s.iter().next())
                        .map(|(k, v)| format!("{k} {}", cell(v)))
                        .unwrap_or_else(|| other.to_string()),
                },
                cell(&f["open_dead_letters"]),
                format!(
                    "{} created, {} written, {} echo, {} conflict, {} failed",
                    cell(&outcomes["created"]),
                    cell(&outcomes["written"]),
                    cell(&outcomes["echo"]),
                    cell(&outcomes["conflict"]),
                    cell(&outcomes["failed"]),
                ),
                side("left"),
                side("right"),
                last_run,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "FLOW",
                "MODE",
                "DEAD",
                "SINCE START",
                "LEFT",
                "RIGHT",
                "LAST RUN"
            ],
            &rows
        )
    );
    Ok(())
}

/// `tandem reconcile`: run a reconcile of one flow in the daemon and print its report.
pub async fn reconcile(
    flow: &str,
    since: Option<&str>,
    repair: bool,
    remote: Remote,
    settings: Settings,
) -> anyhow::Result<()> {
    if let Some(since) = since {
        humantime::parse_duration(since)
            .map_err(|_| anyhow!("--since takes a duration like 24h or 30m, not `{since}`"))?;
    }
    let client = Client::new(&remote, &settings)?.patient()?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(since) = since {
        query.append_pair("since", since);
    }
    query.append_pair("repair", if repair { "true" } else { "false" });
    let path = format!(
        "/flows/{}/reconcile?{}",
        url::form_urlencoded::byte_serialize(flow.as_bytes()).collect::<String>(),
        query.finish()
    );
    let report = client
        .call(reqwest::Method::POST, &path, None)
        .await
        .with_context(|| format!("reconciling flow `{flow}`"))?;
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print!("{}", render_report(&report));
    Ok(())
}

/// A reconcile report as the terminal shows it.
pub fn render_report(report: &Value) -> String {
    let count = |key: &str| report[key].as_array().map_or(0, Vec::len);
    let mut out = format!(
        "flow {}: listed {} left, {} right; {} links; {} skipped while a change is in flight; {} API calls\n",
        cell(&report["flow"]),
        cell(&report["listed_left"]),
        cell(&report["listed_right"]),
        cell(&report["links"]),
        cell(&report["in_flight"]),
        cell(&report["api_calls"]),
    );
    let _ = writeln!(
        out,
        "{} missing counterparts, {} drifted pairs, {} orphaned links",
        count("missing"),
        count("drifted"),
        count("orphaned")
    );
    let list = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    let missing: Vec<Vec<String>> = list("missing")
        .iter()
        .map(|m| {
            vec![
                cell(&m["side"]),
                format!("{} {}", cell(&m["connector"]), cell(&m["object"])),
                cell(&m["id"]),
                cell(&m["marker"]),
            ]
        })
        .collect();
    if !missing.is_empty() {
        out.push_str("\nMISSING COUNTERPARTS\n");
        out.push_str(&table(&["SIDE", "OBJECT", "ID", "MARKER"], &missing));
    }
    let mut drifted = Vec::new();
    for pair in list("drifted") {
        for field in pair["fields"].as_array().cloned().unwrap_or_default() {
            drifted.push(vec![
                cell(&pair["left_id"]),
                cell(&pair["right_id"]),
                format!(
                    "{} / {}",
                    cell(&field["left_field"]),
                    cell(&field["right_field"])
                ),
                cell(&field["left"]),
                cell(&field["right"]),
                cell(&field["changed_since_sync"]),
            ]);
        }
    }
    if !drifted.is_empty() {
        out.push_str("\nDRIFTED FIELDS\n");
        out.push_str(&table(
            &[
                "LEFT",
                "RIGHT",
                "FIELD",
                "LEFT VALUE",
                "RIGHT VALUE",
                "CHANGED SINCE SYNC",
            ],
            &drifted,
        ));
    }
    let orphaned: Vec<Vec<String>> = list("orphaned")
        .iter()
        .map(|o| {
            vec![
                cell(&o["left_id"]),
                cell(&o["right_id"]),
                cell(&o["missing"]),
            ]
        })
        .collect();
    if !orphaned.is_empty() {
        out.push_str("\nORPHANED LINKS\n");
        out.push_str(&table(&["LEFT", "RIGHT", "MISSING"], &orphaned));
    }
    if report["repair"] == true {
        let _ = writeln!(
            out,
            "\nrepair: {} changes appended to the journal; the flow carries them out",
            cell(&report["enqueued"])
        );
    }
    out
}

/// `tandem backfill`: with `--dry-run`, print what a backfill would link and create; otherwise
/// start one in the daemon and follow it with a progress bar until it ends. Interrupting the
/// command leaves the backfill running; running it again after the daemon stopped resumes it.
pub async fn backfill(
    flow: &str,
    dry_run: bool,
    remote: Remote,
    settings: Settings,
) -> anyhow::Result<()> {
    let client = Client::new(&remote, &settings)?.patient()?;
    let flow_path = url::form_urlencoded::byte_serialize(flow.as_bytes()).collect::<String>();
    if dry_run {
        let plan = client
            .call(
                reqwest::Method::POST,
                &format!("/flows/{flow_path}/backfill?dry_run=true"),
                None,
            )
            .await
            .with_context(|| format!("planning a backfill of flow `{flow}`"))?;
        if remote.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", render_plan(&plan));
        }
        return Ok(());
    }
    let started = client
        .call(
            reqwest::Method::POST,
            &format!("/flows/{flow_path}/backfill"),
            None,
        )
        .await
        .with_context(|| format!("starting a backfill of flow `{flow}`"))?;
    let id = started["run"]["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("the daemon's answer names no run: {started}"))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:12} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}",
        )
        .map_err(|e| anyhow!("progress bar template: {e}"))?
        .progress_chars("=> "),
    );
    if remote.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let run = loop {
        let run = client
            .call(
                reqwest::Method::GET,
                &format!("/flows/{flow_path}/runs/{id}"),
                None,
            )
            .await
            .with_context(|| format!("following backfill run {id}"))?;
        let checkpoint = &run["checkpoint"];
        bar.set_message(
            checkpoint["phase"]
                .as_str()
                .unwrap_or("starting")
                .to_string(),
        );
        let total = checkpoint["total"].as_u64().unwrap_or(0);
        bar.set_length(total);
        let done = run["written"].as_u64().unwrap_or(0)
            + run["skipped"].as_u64().unwrap_or(0)
            + run["failed"].as_u64().unwrap_or(0);
        bar.set_position(done.min(total));
        if run["status"] != "running" {
            break run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        let checkpoint = &run["checkpoint"];
        println!(
            "backfill run {id} {}: {} already linked, {} pairs linked, {} ambiguous left alone; \
             {} written, {} skipped, {} failed; {} API calls",
            cell(&run["status"]),
            cell(&checkpoint["already_linked"]),
            cell(&checkpoint["linked"]),
            cell(&checkpoint["ambiguous"]),
            cell(&run["written"]),
            cell(&run["skipped"]),
            cell(&run["failed"]),
            cell(&run["api_calls"]),
        );
    }
    if run["status"] != "succeeded" {
        bail!(
            "backfill run {id} ended {}: {}",
            cell(&run["status"]),
            cell(&run["error"])
        );
    }
    Ok(())
}

/// A backfill plan as the terminal shows it: counts, then each list (long ones cut short;
/// `--json` has everything).
pub fn render_plan(plan: &Value) -> String {
    const SHOWN: usize = 20;
    let list = |key: &str| plan[key].as_array().cloned().unwrap_or_default();
    let (pairs, create, ambiguous) = (list("pairs"), list("create"), list("ambiguous"));
    let mut out = format!(
        "flow {}: listed {} left, {} right; {} already linked\nwould link {} pairs, create {} records, leave {} ambiguous\n",
        cell(&plan["flow"]),
        cell(&plan["listed_left"]),
        cell(&plan["listed_right"]),
        cell(&plan["already_linked"]),
        pairs.len(),
        create.len(),
        ambiguous.len(),
    );
    let more = |out: &mut String, total: usize| {
        if total > SHOWN {
            let _ = writeln!(out, "… and {} more (--json shows all)", total - SHOWN);
        }
    };
    if !pairs.is_empty() {
        out.push_str("\nWOULD LINK\n");
        let rows: Vec<Vec<String>> = pairs
            .iter()
            .take(SHOWN)
            .map(|p| {
                let differing = p["differing"].as_array().map_or(String::new(), |d| {
                    d.iter().map(cell).collect::<Vec<_>>().join(", ")
                });
                vec![
                    cell(&p["left_id"]),
                    cell(&p["right_id"]),
                    cell(&p["by"]),
                    if differing.is_empty() {
                        "-".into()
                    } else {
                        differing
                    },
                ]
            })
            .collect();
        out.push_str(&table(&["LEFT", "RIGHT", "BY", "DIFFERING FIELDS"], &rows));
        more(&mut out, pairs.len());
    }
    if !create.is_empty() {
        out.push_str("\nWOULD CREATE A COUNTERPART FOR\n");
        let rows: Vec<Vec<String>> = create
            .iter()
            .take(SHOWN)
            .map(|c| vec![cell(&c["side"]), cell(&c["id"])])
            .collect();
        out.push_str(&table(&["SIDE", "ID"], &rows));
        more(&mut out, create.len());
    }
    if !ambiguous.is_empty() {
        out.push_str("\nAMBIGUOUS (same match key on several records; left alone)\n");
        let rows: Vec<Vec<String>> = ambiguous
            .iter()
            .take(SHOWN)
            .map(|a| {
                vec![
                    cell(&a["side"]),
                    cell(&a["id"]),
                    cell(&a["key"]),
                    cell(&a["candidates"]),
                ]
            })
            .collect();
        out.push_str(&table(&["SIDE", "ID", "KEY", "CANDIDATES"], &rows));
        more(&mut out, ambiguous.len());
    }
    out
}
