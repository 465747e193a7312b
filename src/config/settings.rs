//! `ironlake.toml`: where the warehouse lives, where the definitions are,
//! and the limits and policy parameters of the daemon.

use super::diag::{Diagnostic, SourceFile};
use crate::domain::decimal::parse_decimal;
use crate::domain::reference;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    warehouse: RawWarehouse,
    #[serde(default)]
    project: RawProject,
    #[serde(default)]
    ingest: RawIngest,
    #[serde(default)]
    sql: RawSql,
    #[serde(default)]
    publish: RawPublish,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    pg: RawPg,
    #[serde(default)]
    policy: Option<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarehouse {
    dir: String,
    #[serde(default = "default_superseded_retention_secs")]
    superseded_retention_secs: u64,
}

fn default_superseded_retention_secs() -> u64 {
    3600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    #[serde(default = "default_schemas_dir")]
    schemas_dir: String,
    #[serde(default = "default_pipelines_dir")]
    pipelines_dir: String,
}

impl Default for RawProject {
    fn default() -> Self {
        RawProject {
            schemas_dir: default_schemas_dir(),
            pipelines_dir: default_pipelines_dir(),
        }
    }
}

fn default_schemas_dir() -> String {
    "schemas".into()
}
fn default_pipelines_dir() -> String {
    "pipelines".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngest {
    #[serde(default = "default_max_concurrent_runs")]
    max_concurrent_runs: Spanned<u32>,
}

impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            max_concurrent_runs: Spanned::new(0..0, default_max_concurrent_runs_value()),
        }
    }
}

fn default_max_concurrent_runs_value() -> u32 {
    2
}
fn default_max_concurrent_runs() -> Spanned<u32> {
    Spanned::new(0..0, default_max_concurrent_runs_value())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSql {
    #[serde(default = "default_memory_limit_mb")]
    memory_limit_mb: u64,
    #[serde(default)]
    spill_dir: Option<String>,
    #[serde(default = "default_target_partitions")]
    target_partitions: usize,
}

impl Default for RawSql {
    fn default() -> Self {
        RawSql {
            memory_limit_mb: default_memory_limit_mb(),
            spill_dir: None,
            target_partitions: default_target_partitions(),
        }
    }
}

fn default_memory_limit_mb() -> u64 {
    4096
}
fn default_target_partitions() -> usize {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    #[serde(default = "default_retention_versions")]
    retention_versions: u32,
}

impl Default for RawPublish {
    fn default() -> Self {
        RawPublish {
            retention_versions: default_retention_versions(),
        }
    }
}

fn default_retention_versions() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default = "default_listen")]
    listen: Spanned<String>,
    #[serde(default)]
    public_aggregates: bool,
    #[serde(default)]
    admin_token_file: Option<String>,
    #[serde(default)]
    analyst_token_file: Option<String>,
    #[serde(default)]
    viewer_token_file: Option<String>,
    #[serde(default = "default_sql_max_rows")]
    sql_max_rows: usize,
    #[serde(default = "default_sql_timeout_secs")]
    sql_timeout_secs: u64,
    #[serde(default = "default_sql_max_bytes")]
    sql_max_bytes: u64,
    #[serde(default = "default_sql_max_concurrent")]
    sql_max_concurrent: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_header_timeout_secs")]
    header_timeout_secs: u64,
    #[serde(default = "default_body_timeout_secs")]
    body_timeout_secs: u64,
    #[serde(default = "default_response_cache_mb")]
    response_cache_mb: u64,
    #[serde(default)]
    partners: Vec<RawPartner>,
    #[serde(default = "default_intake_wait_ms")]
    intake_wait_ms: u64,
    #[serde(default = "default_intake_refresh_debounce_ms")]
    intake_refresh_debounce_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    name: String,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    token_file: Option<String>,
    #[serde(default)]
    pipelines: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPg {
    #[serde(default = "default_pg_listen")]
    listen: Spanned<String>,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<String>,
    #[serde(default = "default_pg_max_connections")]
    max_connections: usize,
}

impl Default for RawPg {
    fn default() -> Self {
        RawPg {
            listen: default_pg_listen(),
            tls_cert: None,
            tls_key: None,
            max_connections: default_pg_max_connections(),
        }
    }
}

fn default_pg_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:5433".to_string())
}

fn default_pg_max_connections() -> usize {
    64
}

fn default_intake_wait_ms() -> u64 {
    5
}

fn default_intake_refresh_debounce_ms() -> u64 {
    1000
}

fn default_response_cache_mb() -> u64 {
    64
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: default_listen(),
            public_aggregates: false,
            admin_token_file: None,
            analyst_token_file: None,
            viewer_token_file: None,
            sql_max_rows: default_sql_max_rows(),
            sql_timeout_secs: default_sql_timeout_secs(),
            sql_max_bytes: default_sql_max_bytes(),
            sql_max_concurrent: default_sql_max_concurrent(),
            max_connections: default_max_connections(),
            header_timeout_secs: default_header_timeout_secs(),
            body_timeout_secs: default_body_timeout_secs(),
            response_cache_mb: default_response_cache_mb(),
            partners: Vec::new(),
            intake_wait_ms: default_intake_wait_ms(),
            intake_refresh_debounce_ms: default_intake_refresh_debounce_ms(),
        }
    }
}

fn default_sql_max_bytes() -> u64 {
    64 << 20
}
fn default_sql_max_concurrent() -> usize {
    4
}
fn default_max_connections() -> usize {
    512
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_body_timeout_secs() -> u64 {
    30
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_string())
}
fn default_sql_max_rows() -> usize {
    100_000
}
fn default_sql_timeout_secs() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    strategic_divisions: Spanned<Vec<Spanned<String>>>,
    interest_subsidy_share_pct: Spanned<String>,
    interest_subsidy_cap_yuan: Spanned<String>,
    guarantee_fee_ceiling_pct: Option<Spanned<String>>,
    guarantee_fee_subsidy_pp: Option<Spanned<String>>,
    dual_hundred_subsidy_share_pct: Option<Spanned<String>>,
    dual_hundred_subsidy_cap_yuan: Option<Spanned<String>>,
    screening_report_within_quarters: Option<Spanned<u32>>,
    screening_max_amount_to_revenue: Option<Spanned<String>>,
    recommendation_lookback_quarters: Option<Spanned<u32>>,
}

/// Ingestion limits.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Most pipeline runs in flight at once, across all pipelines.
    pub max_concurrent_runs: u32,
}

/// SQL engine limits.
#[derive(Debug, Clone)]
pub struct SqlSettings {
    /// Memory pool size for query execution, in MiB; past it queries spill or fail.
    pub memory_limit_mb: u64,
    /// Directory for spill files (default `<warehouse>/_ironlake/spill`).
    pub spill_dir: PathBuf,
    /// Parallelism of query plans.
    pub target_partitions: usize,
}

/// Published-aggregate settings.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// Versions of each aggregate kept on disk, the latest included.
    pub retention_versions: u32,
}

/// HTTP API settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Whether aggregates are readable without a token.
    pub public_aggregates: bool,
    /// File holding the admin token (else env `IRONLAKE_TOKEN_ADMIN`).
    pub admin_token_file: Option<PathBuf>,
    /// File holding the analyst token (else env `IRONLAKE_TOKEN_ANALYST`).
    pub analyst_token_file: Option<PathBuf>,
    /// File holding the viewer token (else env `IRONLAKE_TOKEN_VIEWER`).
    pub viewer_token_file: Option<PathBuf>,
    /// Most rows one API SQL query returns.
    pub sql_max_rows: usize,
    /// Longest one API SQL query may run, encoding of the result included.
    pub sql_timeout_secs: u64,
    /// Largest encoded result of one API SQL query, bytes; past it the result is cut short.
    pub sql_max_bytes: u64,
    /// Most API SQL queries running at once; more are answered 503 with `Retry-After`.
    pub sql_max_concurrent: usize,
    /// Most HTTP connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, seconds.
    pub header_timeout_secs: u64,
    /// Longest a client may take to send a request's body, seconds.
    pub body_timeout_secs: u64,
    /// Memory for encoded aggregate responses, MiB (published versions never change).
    pub response_cache_mb: u64,
    /// Partners that may push records (`[[api.partners]]`).
    pub partners: Vec<Partner>,
    /// How long a push waits for others to share its commit (`api.intake_wait_ms`).
    pub intake_wait: std::time::Duration,
    /// Quiet time after pushes before the aggregates are refreshed
    /// (`api.intake_refresh_debounce_ms`).
    pub intake_refresh_debounce: std::time::Duration,
}

/// PostgreSQL wire protocol settings (`[pg]`): the same warehouse, roles
/// and SQL limits as the HTTP API, for psql, BI tools and drivers.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// Address the PostgreSQL protocol listens on (`--pg-listen` overrides it).
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, clients may (and with
    /// `sslmode=require` do) connect over TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Most PostgreSQL connections open at once; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
}

/// A partner system that pushes records (an enterprise portal).
#[derive(Debug, Clone)]
pub struct Partner {
    /// Name, in logs and the quarantine's source.
    pub name: String,
    /// Environment variable holding its token.
    pub token_env: Option<String>,
    /// File holding its token (mode 600), if not in the environment.
    pub token_file: Option<PathBuf>,
    /// Push pipelines it may push to.
    pub pipelines: Vec<String>,
}

/// Policy parameters of the programme (the plan's percentages are parameters, not constants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Two-digit GB/T 4754 divisions whose new loans earn an interest subsidy.
    pub strategic_divisions: Vec<String>,
    /// Share of the first year's interest on new loans that is subsidised, percent, scale 2 (`5000` = 50.00%).
    pub interest_subsidy_share_pct: i128,
    /// Cap on one enterprise's subsidy per quarter, CNY yuan, scale 2.
    pub interest_subsidy_cap_yuan: i128,
    /// Highest guarantee fee whose guaranteed loans earn the guarantee-fee
    /// subsidy, percent per year, scale 4 (`20000` = 2.0000%).
    pub guarantee_fee_ceiling_pct: i128,
    /// Percentage points of the guarantee fee the city pays on qualifying
    /// loans (at most the fee itself), scale 4.
    pub guarantee_fee_subsidy_pp: i128,
    /// Share of a 双百 enterprise's quarterly working-capital interest that is
    /// subsidised, percent, scale 2.
    pub dual_hundred_subsidy_share_pct: i128,
    /// Cap on one 双百 enterprise's working-capital subsidy per quarter, CNY yuan, scale 2.
    pub dual_hundred_subsidy_cap_yuan: i128,
    /// Screening: an operating report must be at most this many quarters
    /// older than a demand's submission quarter for its data to be current.
    pub screening_report_within_quarters: u32,
    /// Screening: a demand's amount is plausible up to this multiple of the
    /// enterprise's last four reported quarters' revenue, scale 2 (`100` = 1.00).
    pub screening_max_amount_to_revenue: i128,
    /// Recommendation: banks' lending over this many latest quarters of loan reports counts.
    pub recommendation_lookback_quarters: u32,
}

impl Policy {
    /// The `{{placeholder}}` values aggregate SQL may use, as SQL literals
    /// (decimals at their declared scale, divisions as a quoted list).
    pub fn placeholders(&self) -> Vec<(&'static str, String)> {
        use crate::domain::decimal::format_decimal;
        let divisions = self
            .strategic_divisions
            .iter()
            .map(|d| format!("'{d}'"))
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            ("strategic_divisions", divisions),
            (
                "interest_subsidy_share_pct",
                format_decimal(self.interest_subsidy_share_pct, 2),
            ),
            (
                "interest_subsidy_cap_yuan",
                format_decimal(self.interest_subsidy_cap_yuan, 2),
            ),
            (
                "guarantee_fee_ceiling_pct",
                format_decimal(self.guarantee_fee_ceiling_pct, 4),
            ),
            (
                "guarantee_fee_subsidy_pp",
                format_decimal(self.guarantee_fee_subsidy_pp, 4),
            ),
            (
                "dual_hundred_subsidy_share_pct",
                format_decimal(self.dual_hundred_subsidy_share_pct, 2),
            ),
            (
                "dual_hundred_subsidy_cap_yuan",
                format_decimal(self.dual_hundred_subsidy_cap_yuan, 2),
            ),
            (
                "screening_report_within_quarters",
                self.screening_report_within_quarters.to_string(),
            ),
            (
                "screening_max_amount_to_revenue",
                format_decimal(self.screening_max_amount_to_revenue, 2),
            ),
            (
                "recommendation_lookback_quarters",
                self.recommendation_lookback_quarters.to_string(),
            ),
        ]
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            strategic_divisions: ["34", "35", "36", "38", "39", "27"]
                .map(String::from)
                .to_vec(),
            interest_subsidy_share_pct: 5000,
            interest_subsidy_cap_yuan: 200_000_000,
            guarantee_fee_ceiling_pct: 20_000,
            guarantee_fee_subsidy_pp: 10_000,
            dual_hundred_subsidy_share_pct: 5000,
            dual_hundred_subsidy_cap_yuan: 50_000_000,
            screening_report_within_quarters: 2,
            screening_max_amount_to_revenue: 100,
            recommendation_lookback_quarters: 4,
        }
    }
}

/// Validated `ironlake.toml`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Root of the warehouse (`tables/`, `quarantine/`, `published/`, `_ironlake/`).
    pub warehouse_dir: PathBuf,
    /// How long files of a superseded version stay on disk for queries and
    /// external scans that started on it (`warehouse.superseded_retention_secs`).
    pub superseded_retention: std::time::Duration,
    /// Directory of table schemas.
    pub schemas_dir: PathBuf,
    /// Directory of pipeline files (aggregates under `aggregates/` inside it).
    pub pipelines_dir: PathBuf,
    /// Ingestion limits.
    pub ingest: IngestSettings,
    /// SQL engine limits.
    pub sql: SqlSettings,
    /// Published-aggregate settings.
    pub publish: PublishSettings,
    /// HTTP API settings.
    pub api: ApiSettings,
    /// PostgreSQL wire protocol settings.
    pub pg: PgSettings,
    /// Programme policy parameters.
    pub policy: Policy,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() || base == Path::new(".") {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Reads `[policy]` values, reporting each bad one at its place.
struct PolicyReader<'a> {
    file: &'a SourceFile,
    errors: &'a mut Vec<Diagnostic>,
}

impl PolicyReader<'_> {
    /// An exact decimal of `precision`/`scale` within `range` (`default` when absent).
    fn decimal(
        &mut self,
        v: Option<&Spanned<String>>,
        key: &str,
        (precision, scale): (u8, u8),
        default: i128,
        (range, why): (std::ops::RangeInclusive<i128>, &str),
    ) -> i128 {
        let Some(v) = v else { return default };
        let key = format!("policy.{key}");
        match parse_decimal(v.get_ref(), precision, scale) {
            Ok(n) if range.contains(&n) => n,
            Ok(n) => {
                self.errors.push(self.file.error(Some(v.span()), &key, why));
                n
            }
            Err(e) => {
                self.errors.push(self.file.error(
                    Some(v.span()),
                    &key,
                    format!("{e}; write the value as a decimal string, e.g. \"50.00\""),
                ));
                0
            }
        }
    }

    /// A number of quarters, 1..40 (`default` when absent).
    fn quarters(&mut self, v: Option<&Spanned<u32>>, key: &str, default: u32) -> u32 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if !(1..=40).contains(&n) {
            self.errors.push(self.file.error(
                Some(v.span()),
                &format!("policy.{key}"),
                format!("{n}: a number of quarters is 1..40"),
            ));
        }
        n
    }
}

/// The `[policy]` section: strategic divisions and the programme's
/// percentages, caps and windows, exact; absent optional keys take the defaults.
fn policy(file: &SourceFile, p: &RawPolicy, errors: &mut Vec<Diagnostic>) -> Policy {
    let mut divisions = Vec::new();
    for d in p.strategic_divisions.get_ref() {
        let ok = d.get_ref().len() == 2
            && d.get_ref()
                .parse::<u8>()
                .is_ok_and(reference::is_industry_division);
        if !ok {
            errors.push(file.error(
                Some(d.span()),
                "policy.strategic_divisions",
                format!(
                    "{:?} is not an industrial division; expected a two-digit GB/T 4754-2017 division 06..46",
                    d.get_ref()
                ),
            ));
        }
        divisions.push(d.get_ref().clone());
    }
    let share = || (0..=10_000, "a share must be between 0 and 100 percent");
    let amount = || (0..=i128::MAX, "must not be negative");
    let d = Policy::default();
    let mut r = PolicyReader { file, errors };
    Policy {
        strategic_divisions: divisions,
        interest_subsidy_share_pct: r.decimal(
            Some(&p.interest_subsidy_share_pct),
            "interest_subsidy_share_pct",
            (5, 2),
            d.interest_subsidy_share_pct,
            share(),
        ),
        interest_subsidy_cap_yuan: r.decimal(
            Some(&p.interest_subsidy_cap_yuan),
            "interest_subsidy_cap_yuan",
            (18, 2),
            d.interest_subsidy_cap_yuan,
            amount(),
        ),
        guarantee_fee_ceiling_pct: r.decimal(
            p.guarantee_fee_ceiling_pct.as_ref(),
            "guarantee_fee_ceiling_pct",
            (9, 4),
            d.guarantee_fee_ceiling_pct,
            amount(),
        ),
        guarantee_fee_subsidy_pp: r.decimal(
            p.guarantee_fee_subsidy_pp.as_ref(),
            "guarantee_fee_subsidy_pp",
            (9, 4),
            d.guarantee_fee_subsidy_pp,
            amount(),
        ),
        dual_hundred_subsidy_share_pct: r.decimal(
            p.dual_hundred_subsidy_share_pct.as_ref(),
            "dual_hundred_subsidy_share_pct",
            (5, 2),
            d.dual_hundred_subsidy_share_pct,
            share(),
        ),
        dual_hundred_subsidy_cap_yuan: r.decimal(
            p.dual_hundred_subsidy_cap_yuan.as_ref(),
            "dual_hundred_subsidy_cap_yuan",
            (18, 2),
            d.dual_hundred_subsidy_cap_yuan,
            amount(),
        ),
        screening_report_within_quarters: r.quarters(
            p.screening_report_within_quarters.as_ref(),
            "screening_report_within_quarters",
            d.screening_report_within_quarters,
        ),
        screening_max_amount_to_revenue: r.decimal(
            p.screening_max_amount_to_revenue.as_ref(),
            "screening_max_amount_to_revenue",
            (9, 2),
            d.screening_max_amount_to_revenue,
            (i128::MIN..=i128::MAX, ""),
        ),
        recommendation_lookback_quarters: r.quarters(
            p.recommendation_lookback_quarters.as_ref(),
            "recommendation_lookback_quarters",
            d.recommendation_lookback_quarters,
        ),
    }
}

/// A `HOST:PORT` setting; an error (and 127.0.0.1:`example_port` to go on
/// checking) if it is not one.
fn socket_addr(
    file: &SourceFile,
    value: &Spanned<String>,
    key: &str,
    example_port: u16,
    errors: &mut Vec<Diagnostic>,
) -> SocketAddr {
    value.get_ref().parse().unwrap_or_else(|_| {
        errors.push(file.error(
            Some(value.span()),
            key,
            format!(
                "{:?} is not a socket address; expected HOST:PORT with an IP address, e.g. 127.0.0.1:{example_port}",
                value.get_ref()
            ),
        ));
        SocketAddr::from(([127, 0, 0, 1], example_port))
    })
}

/// Loads and validates the settings file; relative paths are resolved against `base`.
pub fn load(file: &SourceFile, base: &Path) -> Result<Settings, Vec<Diagnostic>> {
    let raw: RawSettings = file.parse().map_err(|d| vec![d])?;
    let mut errors = Vec::new();
    let listen = socket_addr(file, &raw.api.listen, "api.listen", 8080, &mut errors);
    let pg_listen = socket_addr(file, &raw.pg.listen, "pg.listen", 5433, &mut errors);
    if raw.pg.tls_cert.is_some() != raw.pg.tls_key.is_some() {
        errors.push(file.error(
            None,
            "pg.tls_cert",
            "set both tls_cert and tls_key (a certificate and its private key), or neither",
        ));
    }
    if *raw.ingest.max_concurrent_runs.get_ref() == 0 {
        errors.push(file.error(
            Some(raw.ingest.max_concurrent_runs.span()),
            "ingest.max_concurrent_runs",
            "must be at least 1",
        ));
    }
    if raw.sql.memory_limit_mb < 64 {
        errors.push(file.error(None, "sql.memory_limit_mb", "must be at least 64"));
    }
    if raw.publish.retention_versions == 0 {
        errors.push(file.error(
            None,
            "publish.retention_versions",
            "must be at least 1 (the latest version)",
        ));
    }
    let policy = match &raw.policy {
        None => Policy::default(),
        Some(p) => policy(file, p, &mut errors),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let warehouse_dir = resolve(base, &raw.warehouse.dir);
    let spill_dir = match &raw.sql.spill_dir {
        Some(d) => resolve(base, d),
        None => warehouse_dir.join("_ironlake").join("spill"),
    };
    Ok(Settings {
        schemas_dir: resolve(base, &raw.project.schemas_dir),
        pipelines_dir: resolve(base, &raw.project.pipelines_dir),
        ingest: IngestSettings {
            max_concurrent_runs: *raw.ingest.max_concurrent_runs.get_ref(),
        },
        sql: SqlSettings {
            memory_limit_mb: raw.sql.memory_limit_mb,
            spill_dir,
            target_partitions: raw.sql.target_partitions.max(1),
        },
        publish: PublishSettings {
            retention_versions: raw.publish.retention_versions,
        },
        api: ApiSettings {
            listen,
            public_aggregates: raw.api.public_aggregates,
            admin_token_file: raw.api.admin_token_file.map(|p| resolve(base, &p)),
            analyst_token_file: raw.api.analyst_token_file.map(|p| resolve(base, &p)),
            viewer_token_file: raw.api.viewer_token_file.map(|p| resolve(base, &p)),
            sql_max_rows: raw.api.sql_max_rows,
            sql_timeout_secs: raw.api.sql_timeout_secs,
            sql_max_bytes: raw.api.sql_max_bytes,
            sql_max_concurrent: raw.api.sql_max_concurrent.max(1),
            max_connections: raw.api.max_connections.max(1),
            header_timeout_secs: raw.api.header_timeout_secs.max(1),
            body_timeout_secs: raw.api.body_timeout_secs.max(1),
            response_cache_mb: raw.api.response_cache_mb,
            partners: raw
                .api
                .partners
                .into_iter()
                .map(|p| Partner {
                    name: p.name,
                    token_env: p.token_env,
                    token_file: p.token_file.map(|f| resolve(base, &f)),
                    pipelines: p.pipelines,
                })
                .collect(),
            intake_wait: std::time::Duration::from_millis(raw.api.intake_wait_ms.min(1000)),
            intake_refresh_debounce: std::time::Duration::from_millis(
                raw.api.intake_refresh_debounce_ms.min(60_000),
            ),
        },
        pg: PgSettings {
            listen: pg_listen,
            tls_cert: raw.pg.tls_cert.map(|p| resolve(base, &p)),
            tls_key: raw.pg.tls_key.map(|p| resolve(base, &p)),
            max_connections: raw.pg.max_connections.max(1),
        },
        policy,
        warehouse_dir,
        superseded_retention: std::time::Duration::from_secs(
            raw.warehouse.superseded_retention_secs,
        ),
    })
}
