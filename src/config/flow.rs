//! Flow settings: which records pair with which, how fields map, when the flow runs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::types::duration;
use super::{ConnectorKind, ConnectorSettings};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSettings {
    pub left: SideSettings,
    pub right: SideSettings,
    /// `both` (default), `left_to_right` or `right_to_left`.
    #[serde(default)]
    pub direction: Direction,
    /// `"realtime"` (default) or `{ scheduled = { every = "15m" } }` / `{ scheduled = { cron = "…" } }`.
    #[serde(default)]
    pub mode: FlowMode,
    /// How a field changed on both sides since the last sync is settled. Default `last_write_wins`.
    #[serde(default)]
    pub conflict: ConflictPolicy,
    /// What a delete on one side does to the other. Default `unlink`.
    #[serde(default)]
    pub deletes: DeletePolicy,
    /// Compare both sides with the links on a schedule (see `tandem reconcile`). Default: only
    /// when asked.
    #[serde(default)]
    pub reconcile: Option<ReconcileSchedule>,
    /// Sync comments (Jira comments ↔ Salesforce `CaseComment`). Default false.
    #[serde(default)]
    pub comments: bool,
    /// Field rules; at least one.
    #[serde(default)]
    pub fields: Vec<FieldRule>,
    /// Values the target needs on create that no rule provides (Jira project and issue type,
    /// Salesforce `Origin`, `Status`), per side.
    #[serde(default)]
    pub defaults: SideDefaults,
}

/// One side of a flow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideSettings {
    /// Name of a configured connector.
    pub connector: String,
    /// `issue` for Jira; an sObject name (`Case`) for Salesforce.
    pub object: String,
    /// Records of this side the flow covers: JQL for Jira, a SOQL `WHERE` clause for Salesforce.
    #[serde(default)]
    pub filter: Option<String>,
    /// Field on this side that holds the other side's record id: the idempotency marker written on
    /// create (a Jira custom field, a Salesforce external-id field). Required on a side the flow
    /// creates records on.
    #[serde(default)]
    pub marker: Option<String>,
    /// Field used by backfill to pair records that existed before Tandem.
    #[serde(default)]
    pub match_key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideDefaults {
    #[serde(default)]
    pub left: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub right: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Both,
    LeftToRight,
    RightToLeft,
}

impl Direction {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::LeftToRight => "left_to_right",
            Direction::RightToLeft => "right_to_left",
        }
    }

    pub fn writes_right(self) -> bool {
        matches!(self, Direction::Both | Direction::LeftToRight)
    }
    pub fn writes_left(self) -> bool {
        matches!(self, Direction::Both | Direction::RightToLeft)
    }
}

#[derive(Debug, Clone, Default)]
pub enum FlowMode {
    #[default]
    Realtime,
    Scheduled(Schedule),
}

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron {
        expression: String,
        cron: Box<croner::Cron>,
        /// The time zone the expression is read in (`timezone = "Europe/Paris"`; UTC when
        /// not given), daylight saving included.
        timezone: chrono_tz::Tz,
    },
}

/// `every` or `cron` (with its `timezone`), as written in a flow's `mode.scheduled` or
/// `reconcile`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(default, with = "duration::option")]
    every: Option<Duration>,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
}

impl RawSchedule {
    fn parse(self, key: &str) -> Result<Schedule, String> {
        match self {
            RawSchedule {
                every: Some(every),
                cron: None,
                timezone: None,
            } => {
                if every.is_zero() {
                    Err(format!("{key}.every must be longer than 0s"))
                } else {
                    Ok(Schedule::Every(every))
                }
            }
            RawSchedule {
                every: None,
                cron: Some(expression),
                timezone,
            } => {
                let timezone = match timezone {
                    None => chrono_tz::Tz::UTC,
                    Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
                        format!(
                            "{key}.timezone `{name}` is not an IANA time zone name (like `Europe/Paris`)"
                        )
                    })?,
                };
                let cron = croner::Cron::new(&expression).parse().map_err(|e| {
                    format!("{key}.cron `{expression}` is not a cron expression ({e})")
                })?;
                Ok(Schedule::Cron {
                    expression,
                    cron: Box::new(cron),
                    timezone,
                })
            }
            RawSchedule {
                every: Some(_),
                timezone: Some(_),
                ..
            } => Err(format!(
                "{key}.timezone goes with `cron`; `every` counts from the last run"
            )),
            _ => Err(format!("{key} gives exactly one of `every` or `cron`")),
        }
    }
}

impl<'de> Deserialize<'de> for FlowMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        enum Raw {
            Realtime,
            Scheduled(RawSchedule),
        }
        match Raw::deserialize(d)? {
            Raw::Realtime => Ok(FlowMode::Realtime),
            Raw::Scheduled(raw) => raw
                .parse("scheduled")
                .map(FlowMode::Scheduled)
                .map_err(D::Error::custom),
        }
    }
}

/// A flow's scheduled reconcile: `reconcile = { every = "24h", repair = true, since = "48h" }`.
#[derive(Debug, Clone)]
pub struct ReconcileSchedule {
    pub schedule: Schedule,
    /// Append the changes that fix what is found (default: only report).
    pub repair: bool,
    /// Compare only records modified this long before the reconcile (default: all).
    pub since: Option<Duration>,
}

impl<'de> Deserialize<'de> for ReconcileSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(default, with = "duration::option")]
            every: Option<Duration>,
            #[serde(default)]
            cron: Option<String>,
            #[serde(default)]
            timezone: Option<String>,
            #[serde(default)]
            repair: bool,
            #[serde(default, with = "duration::option")]
            since: Option<Duration>,
        }
        let raw = Raw::deserialize(d)?;
        let schedule = RawSchedule {
            every: raw.every,
            cron: raw.cron,
            timezone: raw.timezone,
        }
        .parse("reconcile")
        .map_err(D::Error::custom)?;
        Ok(ReconcileSchedule {
            schedule,
            repair: raw.repair,
            since: raw.since,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    #[default]
    LastWriteWins,
    PreferLeft,
    PreferRight,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletePolicy {
    Propagate,
    #[default]
    Unlink,
    Ignore,
}

/// Maps one path on the left to one path on the right.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// Path on the left record, e.g. `summary`, `priority.name`, `customfield_10042`.
    pub left: String,
    /// Path on the right record, e.g. `Subject`.
    pub right: String,
    /// Narrows the flow's direction for this field.
    #[serde(default)]
    pub direction: Option<Direction>,
    /// Overrides the flow's conflict policy for this field.
    #[serde(default)]
    pub conflict: Option<ConflictPolicy>,
    /// Left value → right value (`Highest = "High"`). Used backwards too unless `reverse_map` is set.
    #[serde(default)]
    pub map: Option<BTreeMap<String, String>>,
    /// Right value → left value, when `map` is not one-to-one.
    #[serde(default)]
    pub reverse_map: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub transform: Option<Transform>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Atlassian Document Format on the Jira side ↔ plain text on the other.
    AdfText,
    /// Jira timestamps (`2024-12-29T08:41:23.303+0530`) ↔ Salesforce (`…000+0000`, UTC).
    Datetime,
}

impl FlowSettings {
    /// Problems as (path below the flow, message).
    pub(crate) fn validate(
        &self,
        connectors: &BTreeMap<String, ConnectorSettings>,
    ) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (side, settings, written) in [
            ("left", &self.left, self.direction.writes_left()),
            ("right", &self.right, self.direction.writes_right()),
        ] {
            match connectors.get(&settings.connector) {
                None => problems.push((
                    format!("{side}.connector"),
                    format!(
                        "no connector named `{}` (configured: {})",
                        settings.connector,
                        names(connectors)
                    ),
                )),
                Some(connector) => {
                    if let Some(msg) = check_object(connector.kind(), &settings.object) {
                        problems.push((format!("{side}.object"), msg));
                    }
                }
            }
            if written && settings.marker.as_deref().is_none_or(str::is_empty) {
                problems.push((
                    format!("{side}.marker"),
                    "required: the flow creates records on this side, and each create carries the \
                     source id in this field so a retry finds it instead of creating it twice"
                        .into(),
                ));
            }
        }
        if self.fields.is_empty() {
            problems.push((
                "fields".into(),
                "a flow needs at least one field rule".into(),
            ));
        }
        for (i, rule) in self.fields.iter().enumerate() {
            let at = |key: &str| format!("fields[{i}].{key}");
            if rule.left.trim().is_empty() {
                problems.push((at("left"), "must name a field".into()));
            }
            if rule.right.trim().is_empty() {
                problems.push((at("right"), "must name a field".into()));
            }
            let direction = rule.direction.unwrap_or(self.direction);
            if (direction.writes_left() && !self.direction.writes_left())
                || (direction.writes_right() && !self.direction.writes_right())
            {
                problems.push((
                    at("direction"),
                    format!(
                        "`{}` is wider than the flow's direction `{}`",
                        direction.as_str(),
                        self.direction.as_str()
                    ),
                ));
            }
            if let (Some(map), None, true) = (&rule.map, &rule.reverse_map, direction.writes_left())
            {
                let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
                for (l, r) in map {
                    if let Some(first) = seen.insert(r, l) {
                        problems.push((
                            at("map"),
                            format!(
                                "`{r}` comes from both `{first}` and `{l}`, so it cannot be mapped \
                                 back; add a reverse_map or narrow the rule to left_to_right"
                            ),
                        ));
                    }
                }
            }
        }
        problems
    }
}

fn names(connectors: &BTreeMap<String, ConnectorSettings>) -> String {
    if connectors.is_empty() {
        "none".into()
    } else {
        connectors.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn check_object(kind: ConnectorKind, object: &str) -> Option<String> {
    match kind {
        ConnectorKind::Jira if object != "issue" => Some(format!(
            "`{object}` is not a Jira object Tandem syncs (use `issue`)"
        )),
        ConnectorKind::Salesforce => {
            let mut chars = object.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            (!valid).then(|| format!("`{object}` is not an sObject name (e.g. `Case`)"))
        }
        _ => None,
    }
}
