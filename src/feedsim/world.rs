//! The simulated city: enterprises, their quarterly reports, loans,
//! financing demands and bond/equity issues, all generated on the fly from
//! the seed (nothing is held in memory, so `--enterprises 200000` streams).
//!
//! Amounts are integer cents (fen) and rates integer 1/10000 percent, so the
//! text the feeds send is exact; floats only shape the random draws.

use super::render::push_padded;
use super::rng::Rng;
use crate::domain::Quarter;
use crate::domain::uscc;
use chrono::{Datelike, Duration, NaiveDate};

/// Enterprise size class (企业规模).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 大型.
    Large,
    /// 中型.
    Medium,
    /// 小型.
    Small,
    /// 微型.
    Micro,
}

impl Size {
    /// The schema's enumeration value.
    pub fn as_str(self) -> &'static str {
        match self {
            Size::Large => "large",
            Size::Medium => "medium",
            Size::Small => "small",
            Size::Micro => "micro",
        }
    }
}

/// Static attributes of one enterprise.
#[derive(Debug, Clone)]
pub struct Enterprise {
    /// Position in the registry (0-based).
    pub index: usize,
    /// Unified social credit code with a correct check character.
    pub uscc: String,
    /// Registered name.
    pub name: String,
    /// GB/T 2260 district code.
    pub district: &'static str,
    /// GB/T 4754-2017 four-digit class.
    pub industry: String,
    /// Size class.
    pub size: Size,
    /// 规上.
    pub above_scale: bool,
    /// 双百 重点.
    pub key_enterprise: bool,
    /// 双百 成长型.
    pub growth_enterprise: bool,
    /// 专精特新.
    pub specialized_sme: bool,
    /// 上市后备 (from `listing_from` on).
    pub listing_from: Option<Quarter>,
    /// 成立日期.
    pub established_on: Option<NaiveDate>,
    /// First quarter the enterprise is in the registry.
    pub entry: Quarter,
    /// Base quarterly revenue in yuan, before growth and seasonality.
    pub base_revenue: f64,
    /// Yearly growth rate of revenue.
    pub growth: f64,
}

/// One quarter-end loan position.
#[derive(Debug, Clone)]
pub struct Loan {
    /// Bank institution code.
    pub bank_code: &'static str,
    /// Contract number.
    pub loan_id: String,
    /// Quarter of the position.
    pub quarter: Quarter,
    /// Borrower index.
    pub enterprise: usize,
    /// Balance, fen.
    pub balance: i128,
    /// Drawn in the quarter, fen.
    pub disbursed: i128,
    /// Rate, 1/10000 percent.
    pub rate: i128,
    /// `short` or `medium_long`.
    pub term: &'static str,
    /// Guarantee type.
    pub guarantee: &'static str,
    /// Product.
    pub product: &'static str,
    /// Guarantee fee, 1/10000 percent.
    pub guarantee_fee: Option<i128>,
}

/// One quarterly operating report.
#[derive(Debug, Clone)]
pub struct Operations {
    /// Reporter index.
    pub enterprise: usize,
    /// Quarter reported.
    pub quarter: Quarter,
    /// Amounts in fen: revenue, cost, financial expenses, interest, profit,
    /// output, assets, liabilities.
    pub revenue: i128,
    /// 主营业务成本, fen.
    pub cost: i128,
    /// 财务费用, fen.
    pub financial_expenses: i128,
    /// 利息支出, fen.
    pub interest_expense: i128,
    /// 利润总额, fen.
    pub total_profit: i128,
    /// 工业总产值, fen.
    pub output_value: i128,
    /// 资产总计, fen.
    pub total_assets: i128,
    /// 负债合计, fen.
    pub total_liabilities: i128,
    /// Employees.
    pub employees: i32,
    /// Energy, 1/100 tce.
    pub energy: i128,
    /// Water, 1/100 m³.
    pub water: i128,
}

/// One version (status change) of a financing demand.
#[derive(Debug, Clone)]
pub struct DemandEvent {
    /// Demand number.
    pub demand_id: String,
    /// Applicant index.
    pub enterprise: usize,
    /// Submission date.
    pub submitted_on: NaiveDate,
    /// Requested, fen.
    pub amount: i128,
    /// Requested term.
    pub term_months: i32,
    /// Use of funds.
    pub purpose: &'static str,
    /// Instrument sought.
    pub instrument: &'static str,
    /// 五类项目 category.
    pub project_category: &'static str,
    /// Status of this version.
    pub status: &'static str,
    /// Date of this status.
    pub status_on: NaiveDate,
    /// Bank, from recommendation on.
    pub bank_code: Option<&'static str>,
    /// Funded, fen.
    pub funded_amount: Option<i128>,
    /// Funded rate, 1/10000 percent.
    pub rate: Option<i128>,
}

/// One bond or equity issue.
#[derive(Debug, Clone)]
pub struct Issue {
    /// Record number.
    pub record_id: String,
    /// Issuer index.
    pub enterprise: usize,
    /// Instrument.
    pub instrument: &'static str,
    /// Raised, fen.
    pub amount: i128,
    /// Issue date.
    pub issued_on: NaiveDate,
    /// Coupon for bonds, 1/10000 percent.
    pub rate: Option<i128>,
}

/// Chongqing's districts with weights for industrial weight (heavier where
/// industry concentrates: Liangjiang/渝北, 九龙坡, 沙坪坝, 江津, 璧山, 长寿 …).
const DISTRICTS: &[(&str, u32)] = &[
    ("500101", 3),
    ("500102", 5),
    ("500103", 1),
    ("500104", 3),
    ("500105", 5),
    ("500106", 6),
    ("500107", 7),
    ("500108", 4),
    ("500109", 5),
    ("500110", 3),
    ("500111", 4),
    ("500112", 10),
    ("500113", 6),
    ("500114", 1),
    ("500115", 5),
    ("500116", 7),
    ("500117", 4),
    ("500118", 5),
    ("500119", 2),
    ("500120", 6),
    ("500151", 4),
    ("500152", 3),
    ("500153", 4),
    ("500154", 2),
    ("500155", 2),
    ("500156", 1),
    ("500229", 1),
    ("500230", 1),
    ("500231", 2),
    ("500233", 1),
    ("500235", 1),
    ("500236", 1),
    ("500237", 1),
    ("500238", 1),
    ("500240", 1),
    ("500241", 1),
    ("500242", 1),
    ("500243", 1),
];

/// Divisions weighted toward Chongqing's structure: automobiles (36) and
/// electronics (39) largest, then equipment, materials, chemicals and
/// pharmaceuticals, consumer goods, energy; a few non-industrial borrowers.
const DIVISIONS: &[(u8, u32)] = &[
    (36, 180),
    (39, 160),
    (38, 60),
    (34, 55),
    (35, 45),
    (37, 45),
    (33, 50),
    (30, 65),
    (31, 15),
    (32, 15),
    (26, 45),
    (27, 40),
    (28, 5),
    (29, 30),
    (13, 25),
    (14, 15),
    (15, 20),
    (17, 10),
    (18, 10),
    (19, 5),
    (20, 5),
    (21, 8),
    (22, 8),
    (23, 6),
    (24, 4),
    (25, 5),
    (40, 10),
    (41, 4),
    (42, 4),
    (43, 3),
    (6, 10),
    (8, 3),
    (10, 5),
    (44, 18),
    (45, 8),
    (46, 8),
    (51, 15),
    (52, 10),
    (72, 10),
    (65, 8),
];

/// Quarters over which enterprises enter the registry and listings are planned.
const HORIZON_QUARTERS: i32 = 12;

/// Banks lending in Chongqing: CNAPS-style institution codes.
pub const BANKS: &[(&str, &str)] = &[
    ("102653000013", "中国工商银行重庆市分行"),
    ("103653000012", "中国农业银行重庆市分行"),
    ("104653000011", "中国银行重庆市分行"),
    ("105653000010", "中国建设银行重庆市分行"),
    ("301653000017", "交通银行重庆市分行"),
    ("201653000015", "国家开发银行重庆市分行"),
    ("313653000014", "重庆银行"),
    ("314653000013", "重庆农村商业银行"),
    ("302653000016", "中信银行重庆分行"),
    ("303653000015", "中国光大银行重庆分行"),
    ("305653000013", "中国民生银行重庆分行"),
    ("308653000010", "招商银行重庆分行"),
    ("309653000019", "兴业银行重庆分行"),
    ("310653000018", "上海浦东发展银行重庆分行"),
    ("403653000012", "中国邮政储蓄银行重庆分行"),
];

const NAME_HEADS: &[&str] = &[
    "长安", "渝", "嘉陵", "巴", "山城", "两江", "金", "华", "明", "鑫", "恒", "瑞", "宏", "力帆",
    "隆", "庆", "铭", "博", "智", "天", "锦", "江", "峡", "盛", "泰", "弘", "钢", "翔", "东", "西",
    "南", "北", "新", "宇", "晟", "德", "兴", "达", "安", "永",
];
const NAME_TAILS: &[&str] = &[
    "科", "创", "通", "航", "源", "丰", "顺", "远", "信", "联", "昌", "威", "驰", "润", "众", "卓",
    "诚", "邦", "嘉", "耀", "海", "宁", "和", "禾", "川", "峰", "森", "荣", "辉", "奥",
];

fn division_word(division: u8) -> &'static str {
    match division {
        36 => "汽车零部件",
        39 => "电子科技",
        38 => "电气",
        34 | 35 => "机械",
        37 => "摩托车",
        33 => "金属制品",
        30 => "建材",
        31 | 32 => "冶金",
        26 | 28 => "化工",
        27 => "制药",
        13..=15 => "食品",
        17..=19 => "纺织",
        29 => "塑胶",
        44 => "电力",
        45 => "燃气",
        46 => "水务",
        6 | 8 | 10 => "矿业",
        51 | 52 => "商贸",
        _ => "实业",
    }
}

/// The benchmark (before the 2019 LPR reform) or LPR rate, 1/10000 percent,
/// for loans originated in `q`: `(one_year, over_five_years)`.
pub fn base_rates(q: Quarter) -> (i128, i128) {
    let (y, n) = (q.year(), q.q());
    match (y, n) {
        (..=2018, _) | (2019, 1 | 2) => (43500, 49000),
        (2019, 3) => (42000, 48500),
        (2019, 4) => (41500, 48000),
        (2020, 1) => (40500, 47500),
        _ => (38500, 46500),
    }
}

/// Round a yuan amount to fen.
fn fen(yuan: f64) -> i128 {
    (yuan * 100.0).round() as i128
}

/// Round a yuan amount to a multiple of `unit` yuan, in fen.
fn round_to(yuan: f64, unit: f64) -> i128 {
    ((yuan / unit).round().max(1.0) * unit * 100.0) as i128
}

fn date_in(q: Quarter, r: &mut Rng) -> NaiveDate {
    let days = (q.last_day() - q.first_day()).num_days();
    q.first_day() + Duration::days(r.range(0, days))
}

/// A loan's contract number: the bank code's first three characters, the
/// origination quarter, the borrower's index in 7 digits and the loan's
/// number in 2 (`format!("{}{}{:07}{:02}", …)`, written without the
/// formatter: a backfill draws millions).
fn loan_id(bank: &str, origin: Quarter, index: usize, j: u32) -> String {
    let mut id = String::with_capacity(24);
    id.push_str(&bank[..3]);
    push_padded(&mut id, origin.year().unsigned_abs().into(), 4);
    id.push('Q');
    id.push(char::from(b'0' + origin.q()));
    push_padded(&mut id, index as u64, 7);
    push_padded(&mut id, j.into(), 2);
    id
}

/// The longest a loan runs, in quarters (a medium- or long-term loan's
/// term is 4 to 20 quarters): a quarter's positions come from contracts
/// signed in it and the 19 quarters before.
pub const MAX_LOAN_AGE: i32 = 20;

/// A loan contract as signed: when, its number that quarter, its term, and
/// the random stream its remaining terms are drawn from.
#[derive(Debug, Clone)]
pub struct Contract {
    origin: Quarter,
    j: u32,
    term_q: i32,
    medium_long: bool,
    rng: Rng,
}

impl Contract {
    /// Quarters since it was signed, at the end of `q`; `None` before it
    /// was signed or once it has run its term.
    fn age_at(&self, q: Quarter) -> Option<i32> {
        let age = q.quarters_since(self.origin);
        (0..self.term_q).contains(&age).then_some(age)
    }
}

/// The simulated city for one seed and size.
#[derive(Debug, Clone)]
pub struct World {
    /// Seed of every random draw.
    pub seed: u64,
    /// Number of enterprises in the registry.
    pub enterprises: usize,
    /// First simulated quarter.
    pub from: Quarter,
    /// Last simulated quarter ("now" for the partners).
    pub to: Quarter,
}

impl World {
    /// The enterprise at `index`.
    pub fn enterprise(&self, index: usize) -> Enterprise {
        let mut r = Rng::new(self.seed, "enterprise", &[index as u64]);
        let district = DISTRICTS[r.weighted_by(DISTRICTS, |d| d.1)].0;
        let division = DIVISIONS[r.weighted_by(DIVISIONS, |d| d.1)].0;
        let industry = format!("{division:02}{}{}", r.range(1, 9), r.range(0, 9));
        let size = match r.weighted(&[4, 14, 62, 20]) {
            0 => Size::Large,
            1 => Size::Medium,
            2 => Size::Small,
            _ => Size::Micro,
        };
        let above_scale = match size {
            Size::Large | Size::Medium => true,
            Size::Small => r.chance(0.9),
            Size::Micro => r.chance(0.3),
        };
        let key_enterprise =
            size == Size::Large && r.chance(0.35) || size == Size::Medium && r.chance(0.02);
        let growth_enterprise =
            !key_enterprise && matches!(size, Size::Medium | Size::Small) && r.chance(0.02);
        let specialized_sme = matches!(size, Size::Medium | Size::Small) && r.chance(0.05);
        // Fixed horizons keep the city the same whatever `to` is: a later
        // "today" only reveals more of it.
        let span = HORIZON_QUARTERS as i64 - 1;
        let listing_from = (r.chance(0.025) && size != Size::Micro)
            .then(|| self.from.plus(r.range(0, span) as i32));
        let established_on = (!r.chance(0.02)).then(|| {
            let start = NaiveDate::from_ymd_opt(1985, 1, 1).expect("valid");
            let end = self.from.first_day();
            start + Duration::days(r.range(0, (end - start).num_days()))
        });
        // 85% are in the registry from the start; the rest enter progressively.
        let n = self.enterprises.max(1);
        let settled = n * 85 / 100;
        let total_q = HORIZON_QUARTERS;
        let entry = if index < settled {
            self.from
        } else {
            let frac = (index - settled) as f64 / (n - settled).max(1) as f64;
            self.from
                .plus(((frac * f64::from(total_q)) as i32).min(total_q - 1))
        };
        let base_revenue = match size {
            Size::Large => r.log_uniform(5e8, 6e9),
            Size::Medium => r.log_uniform(5e7, 5e8),
            Size::Small => r.log_uniform(5e6, 5e7),
            Size::Micro => r.log_uniform(1e6, 5e6),
        };
        let growth = r.uniform(-0.06, 0.16);
        let new_style = established_on.is_none_or(|d| d.year() >= 2015) || r.chance(0.3);
        let org = if new_style {
            // "MA" + 7 characters encoding the index: unique per enterprise.
            let mut v = (index as u64).wrapping_mul(2_654_435_761) % 27_512_614_111; // < 31^7
            let mut s = String::from("MA");
            let mut tail = [0u8; 7];
            for t in tail.iter_mut().rev() {
                *t = uscc::ALPHABET[(v % 31) as usize];
                v /= 31;
            }
            s.push_str(std::str::from_utf8(&tail).expect("ascii"));
            s
        } else {
            format!("{:09}", 200_000_000 + (index as u64 * 7_919) % 700_000_000)
        };
        let body = format!("91{district}{org}");
        let check = uscc::check_character(&body).expect("valid alphabet");
        let uscc = format!("{body}{check}");
        let name = format!(
            "重庆{}{}{}有限公司",
            r.pick(NAME_HEADS),
            r.pick(NAME_TAILS),
            division_word(division)
        );
        Enterprise {
            index,
            uscc,
            name,
            district,
            industry,
            size,
            above_scale,
            key_enterprise,
            growth_enterprise,
            specialized_sme,
            listing_from,
            established_on,
            entry,
            base_revenue,
            growth,
        }
    }

    /// Quarters simulated, in order.
    pub fn quarters(&self) -> impl Iterator<Item = Quarter> {
        self.from.through(self.to)
    }

    /// Whether `q` is inside the simulated range.
    pub fn in_range(&self, q: Quarter) -> bool {
        self.from <= q && q <= self.to
    }

    /// The last day the partners know about.
    pub fn today(&self) -> NaiveDate {
        self.to.last_day()
    }

    /// The quarterly operating report of enterprise `e` for `q`, if it reports.
    pub fn operations(&self, ent: &Enterprise, q: Quarter) -> Option<Operations> {
        if !self.in_range(q) || q < ent.entry {
            return None;
        }
        let mut r = Rng::new(
            self.seed,
            "operations",
            &[ent.index as u64, q.year() as u64, u64::from(q.q())],
        );
        let years = f64::from((q.year() - self.from.year()) * 4 + i32::from(q.q()) - 1) / 4.0;
        let season = [0.86, 1.0, 1.0, 1.14][usize::from(q.q() - 1)];
        let revenue_y =
            ent.base_revenue * (1.0 + ent.growth).powf(years) * season * r.uniform(0.95, 1.05);
        let margin = if r.chance(0.12) {
            r.uniform(-0.08, 0.0)
        } else {
            r.uniform(0.03, 0.22)
        };
        let cost_y = revenue_y * (1.0 - margin - r.uniform(0.02, 0.06));
        let assets_y = revenue_y * 4.0 * r.uniform(0.8, 1.9);
        let liabilities_y = assets_y * r.uniform(0.3, 0.75);
        let interest_y = liabilities_y * 0.55 * 0.048 / 4.0 * r.uniform(0.85, 1.15);
        let fin_exp_y = interest_y * r.uniform(0.9, 1.05) - revenue_y * r.uniform(0.0, 0.002);
        let profit_y = revenue_y - cost_y - fin_exp_y - revenue_y * r.uniform(0.02, 0.08);
        let employees = (revenue_y / r.uniform(2.5e5, 6e5)).max(8.0) as i32;
        let division: u32 = ent.industry[..2].parse().unwrap_or(0);
        let energy_intensity = match division {
            25 | 26 | 30 | 31 | 32 | 44 => 0.9,
            6..=12 | 22 | 28 | 29 => 0.3,
            _ => 0.05,
        };
        Some(Operations {
            enterprise: ent.index,
            quarter: q,
            revenue: fen(revenue_y),
            cost: fen(cost_y),
            financial_expenses: fen(fin_exp_y),
            interest_expense: fen(interest_y),
            total_profit: fen(profit_y),
            output_value: fen(revenue_y * r.uniform(0.98, 1.1)),
            total_assets: fen(assets_y),
            total_liabilities: fen(liabilities_y),
            employees,
            energy: fen(revenue_y / 1e4 * energy_intensity * r.uniform(0.8, 1.2)),
            water: fen(revenue_y / 1e3 * energy_intensity * r.uniform(0.5, 1.5)),
        })
    }

    /// Expected new loan contracts of an enterprise per quarter.
    fn loan_rate(ent: &Enterprise) -> f64 {
        match ent.size {
            Size::Large => 1.5,
            Size::Medium => 0.6,
            Size::Small => 0.28,
            Size::Micro => 0.1,
        }
    }

    /// Loan positions of enterprise `ent` at the end of `q`, in contract order.
    ///
    /// Loans are drawn per origination quarter (up to 20 quarters back), so
    /// a quarter's report never depends on the simulated range's end.
    pub fn loans(&self, ent: &Enterprise, q: Quarter, out: &mut Vec<Loan>) {
        if !self.in_range(q) || q < ent.entry {
            return;
        }
        let mut contracts = Vec::with_capacity(16);
        self.contracts(ent, q.plus(-(MAX_LOAN_AGE - 1)), q, &mut contracts);
        out.extend(
            self.running(ent, &contracts, q)
                .map(|c| self.loan_at(ent, c, q)),
        );
    }

    /// The contracts among `contracts` of `ent` that have a position at
    /// the end of `q`, in order: none outside the simulated range or
    /// before `ent` enters the registry.
    pub fn running<'a>(
        &self,
        ent: &Enterprise,
        contracts: &'a [Contract],
        q: Quarter,
    ) -> impl Iterator<Item = &'a Contract> + use<'a> {
        let reported = self.in_range(q) && q >= ent.entry;
        contracts
            .iter()
            .filter(move |c| reported && c.age_at(q).is_some())
    }

    /// The loan contracts `ent` signed from `first` through `last`, in
    /// contract order (origination quarter, then number): the draws that
    /// decide whether a contract is still running in a given quarter.
    /// [`World::loan_at`] gives its position at a quarter end.
    pub fn contracts(
        &self,
        ent: &Enterprise,
        first: Quarter,
        last: Quarter,
        out: &mut Vec<Contract>,
    ) {
        let rate = Self::loan_rate(ent);
        // The streams `("loan-count", [index, year, q])` and
        // `("loan", [index, year, q, j])`, with the enterprise mixed in once.
        let counts = Rng::new(self.seed, "loan-count", &[ent.index as u64]);
        let draws = Rng::new(self.seed, "loan", &[ent.index as u64]);
        for origin in first.through(last) {
            let mut n_rng = counts.with(&[origin.year() as u64, u64::from(origin.q())]);
            // Poisson-like draw: whole part plus a chance for the fraction.
            let n = rate.floor() as u32 + u32::from(n_rng.chance(rate.fract()));
            for j in 0..n {
                let mut rng =
                    draws.with(&[origin.year() as u64, u64::from(origin.q()), u64::from(j)]);
                let medium_long = rng.chance(0.45);
                let term_q = if medium_long {
                    rng.range(4, 20)
                } else {
                    rng.range(1, 4)
                } as i32;
                out.push(Contract {
                    origin,
                    j,
                    term_q,
                    medium_long,
                    rng,
                });
            }
        }
    }

    /// The position at the end of `q` of contract `c` of `ent`, one of
    /// those [`World::running`] gives for `q`.
    pub fn loan_at(&self, ent: &Enterprise, c: &Contract, q: Quarter) -> Loan {
        let (origin, j, term_q, medium_long) = (c.origin, c.j, c.term_q, c.medium_long);
        let age = c.age_at(q).expect("a contract running at q");
        let mut r = c.rng.clone();
        let bank = BANKS[r.weighted(&[14, 12, 10, 14, 6, 5, 9, 11, 3, 3, 3, 4, 3, 3, 4])].0;
        let amount = round_to(ent.base_revenue * 4.0 * r.uniform(0.015, 0.12), 10_000.0);
        let balance = if medium_long {
            amount * i128::from(term_q - age) / i128::from(term_q)
        } else {
            amount
        };
        let (one_year, five_year) = base_rates(origin);
        let base = if medium_long { five_year } else { one_year };
        let rate_pct = if origin < Quarter::new(2019, 3).expect("valid") {
            // Benchmark × a floating multiple in 5% steps.
            base * i128::from(r.range(18, 26) as i32) / 20
        } else {
            // LPR + a spread in 5 bp steps.
            base + 500 * i128::from(r.range(-4, 30) as i32)
        };
        let guarantee = [
            "credit",
            "guaranteed",
            "mortgage",
            "pledge_receivables",
            "pledge_ip",
            "pledge_other",
        ][r.weighted(&[25, 30, 30, 8, 3, 4])];
        let product = [
            "ordinary",
            "syndicated",
            "supply_chain",
            "trade_finance",
            "cross_border",
        ][r.weighted(&[70, if ent.size == Size::Large { 12 } else { 1 }, 12, 8, 4])];
        let guarantee_fee =
            (guarantee == "guaranteed").then(|| 1000 * i128::from(r.range(10, 25) as i32));
        Loan {
            bank_code: bank,
            loan_id: loan_id(bank, origin, ent.index, j),
            quarter: q,
            enterprise: ent.index,
            balance,
            disbursed: if age == 0 { amount } else { 0 },
            rate: rate_pct,
            term: if medium_long { "medium_long" } else { "short" },
            guarantee,
            product,
            guarantee_fee,
        }
    }

    /// Whether enterprise `ent` submits a demand in `q`, and its full history
    /// of status changes up to the simulation's last day.
    pub fn demand(&self, ent: &Enterprise, q: Quarter) -> Vec<DemandEvent> {
        if !self.in_range(q) || q < ent.entry {
            return Vec::new();
        }
        let mut r = Rng::new(
            self.seed,
            "demand",
            &[ent.index as u64, q.year() as u64, u64::from(q.q())],
        );
        let p = match ent.size {
            Size::Large => 0.01,
            Size::Medium => 0.04,
            Size::Small => 0.06,
            Size::Micro => 0.08,
        };
        if !r.chance(p) {
            return Vec::new();
        }
        let submitted_on = date_in(q, &mut r);
        let amount = round_to(r.log_uniform(5e5, 5e7), 10_000.0);
        let term_months = *r.pick(&[6, 12, 12, 24, 36, 60]);
        let purpose = [
            "working_capital",
            "tech_upgrade",
            "equipment",
            "project",
            "other",
        ][r.weighted(&[45, 20, 18, 12, 5])];
        let instrument = [
            "loan",
            "syndicated",
            "receivables_pledge",
            "ip_pledge",
            "bond",
            "equity",
            "leasing",
        ][r.weighted(&[60, 3, 14, 6, 3, 5, 9])];
        let project_category = [
            "mic2025",
            "two_integration",
            "transformation",
            "demo_base",
            "going_global",
            "none",
        ][r.weighted(&[10, 8, 12, 4, 3, 63])];
        let bank = BANKS[r.range(0, BANKS.len() as i64 - 1) as usize].0;
        let demand_id = format!("FD{}{:07}", q, ent.index);
        let submitted = DemandEvent {
            demand_id,
            enterprise: ent.index,
            submitted_on,
            amount,
            term_months,
            purpose,
            instrument,
            project_category,
            status: "submitted",
            status_on: submitted_on,
            bank_code: None,
            funded_amount: None,
            rate: None,
        };
        self.demand_history(submitted, bank, &mut r)
    }

    /// The status changes of one demand, in date order, up to the
    /// simulation's last day: through the funnel, or out of it (rejected
    /// after screening or acceptance, or withdrawn).
    fn demand_history(&self, t: DemandEvent, bank: &'static str, r: &mut Rng) -> Vec<DemandEvent> {
        let today = self.today();
        let at = |status, status_on, bank_code, funded_amount, rate| DemandEvent {
            status,
            status_on,
            bank_code,
            funded_amount,
            rate,
            ..t.clone()
        };
        let mut events = Vec::new();
        let mut on = t.submitted_on;
        let steps: [(&str, i64, i64); 6] = [
            ("submitted", 0, 0),
            ("screened", 2, 10),
            ("recommended", 3, 15),
            ("accepted", 3, 15),
            ("credit_granted", 7, 30),
            ("funded", 3, 20),
        ];
        let mut bank_code = None;
        for (i, (status, lo, hi)) in steps.iter().enumerate() {
            on += Duration::days(r.range(*lo, *hi));
            if on > today {
                break;
            }
            if i == 2 && r.chance(0.15) || i == 4 && r.chance(0.12) {
                events.push(at("rejected", on, bank_code, None, None));
                break;
            }
            if i == 3 && r.chance(0.05) {
                events.push(at("withdrawn", on, bank_code, None, None));
                break;
            }
            if *status == "recommended" {
                bank_code = Some(bank);
            }
            let (funded, rate) = if *status == "funded" {
                let funded =
                    round_to(t.amount as f64 / 100.0 * r.uniform(0.5, 1.0), 10_000.0).min(t.amount);
                let rate =
                    base_rates(Quarter::from_date(on)).0 + 500 * i128::from(r.range(-6, 20) as i32);
                (Some(funded), Some(rate))
            } else {
                (None, None)
            };
            events.push(at(status, on, bank_code, funded, rate));
        }
        events
    }

    /// Bond and equity issues of enterprise `ent` inside the simulated range,
    /// drawn quarter by quarter.
    pub fn issues(&self, ent: &Enterprise) -> Vec<Issue> {
        let p = match ent.size {
            Size::Large => 0.06,
            Size::Medium => 0.015,
            Size::Small => 0.002,
            Size::Micro => 0.0005,
        } + if ent.listing_from.is_some() {
            0.03
        } else {
            0.0
        };
        let mut out = Vec::new();
        for q in self.quarters() {
            if q < ent.entry {
                continue;
            }
            let mut r = Rng::new(
                self.seed,
                "issues",
                &[ent.index as u64, q.year() as u64, u64::from(q.q())],
            );
            if !r.chance(p) {
                continue;
            }
            let issued_on = date_in(q, &mut r);
            let equity = match ent.size {
                Size::Large => r.chance(0.15),
                Size::Medium => r.chance(0.4),
                _ => r.chance(0.8),
            };
            let (instrument, amount, rate) = if equity {
                let instrument = if ent.listing_from.is_some_and(|l| l <= q) && r.chance(0.5) {
                    "ipo"
                } else {
                    match ent.size {
                        Size::Large => "follow_on",
                        Size::Medium => ["neeq", "follow_on"][r.weighted(&[3, 1])],
                        _ => ["neeq", "regional_equity"][r.weighted(&[1, 2])],
                    }
                };
                let amount = match instrument {
                    "ipo" => r.log_uniform(3e8, 2e9),
                    "follow_on" => r.log_uniform(2e8, 3e9),
                    "neeq" => r.log_uniform(5e6, 5e7),
                    _ => r.log_uniform(1e6, 1e7),
                };
                (instrument, round_to(amount, 10_000.0), None)
            } else {
                let instrument = ["enterprise_bond", "corporate_bond", "mtn", "cp", "abs"]
                    [r.weighted(&[2, 3, 3, 2, 1])];
                let amount = round_to(r.log_uniform(1e8, 2e9), 1_000_000.0);
                (
                    instrument,
                    amount,
                    Some(100 * i128::from(r.range(380, 750) as i32)),
                )
            };
            out.push(Issue {
                record_id: format!("DF{q}{:07}", ent.index),
                enterprise: ent.index,
                instrument,
                amount,
                issued_on,
                rate,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World {
            seed: 7,
            enterprises: 500,
            from: Quarter::new(2017, 1).unwrap(),
            to: Quarter::new(2019, 4).unwrap(),
        }
    }

    #[test]
    fn shortcuts_draw_what_the_plain_streams_draw() {
        // Rng::with continues Rng::new's mixing of parts.
        let (a, b) = (
            Rng::new(9, "loan", &[3, 2019, 4, 1]).next_u64(),
            Rng::new(9, "loan", &[3]).with(&[2019, 4, 1]).next_u64(),
        );
        assert_eq!(a, b);
        // loan_id writes what format! would.
        for (bank, q, index, j) in [
            ("C10203", "2019Q4", 0, 0),
            ("B10211", "2016Q1", 1_234_567, 13),
            ("C10305", "2017Q3", 42, 7),
        ] {
            let q: Quarter = q.parse().unwrap();
            assert_eq!(
                loan_id(bank, q, index, j),
                format!("{}{}{:07}{:02}", &bank[..3], q, index, j)
            );
        }
    }

    #[test]
    fn every_generated_uscc_validates_and_is_unique() {
        let w = world();
        let mut seen = std::collections::HashSet::new();
        for i in 0..w.enterprises {
            let e = w.enterprise(i);
            assert!(uscc::is_valid(&e.uscc), "{}", e.uscc);
            assert!(seen.insert(e.uscc.clone()), "duplicate {}", e.uscc);
            assert!(crate::domain::reference::validate_district(e.district).is_ok());
            assert!(
                crate::domain::reference::validate_industry(&e.industry).is_ok(),
                "{}",
                e.industry
            );
        }
    }

    #[test]
    fn operating_figures_hang_together() {
        let w = world();
        let mut cost_below_revenue = 0;
        let mut n = 0;
        for i in 0..200 {
            let e = w.enterprise(i);
            for q in w.quarters() {
                if let Some(o) = w.operations(&e, q) {
                    n += 1;
                    if o.cost < o.revenue {
                        cost_below_revenue += 1;
                    }
                    assert!(o.total_liabilities < o.total_assets);
                    // Financial expenses track interest expense (within ±15%).
                    assert!(o.financial_expenses <= o.interest_expense * 115 / 100);
                    assert!(
                        o.financial_expenses >= o.interest_expense * 70 / 100 - o.revenue / 400
                    );
                }
            }
        }
        assert!(
            cost_below_revenue * 100 / n >= 85,
            "{cost_below_revenue}/{n}"
        );
    }

    #[test]
    fn loan_rates_follow_benchmark_then_lpr() {
        let w = world();
        let mut before = Vec::new();
        for i in 0..200 {
            let e = w.enterprise(i);
            let mut loans = Vec::new();
            w.loans(&e, Quarter::new(2018, 2).unwrap(), &mut loans);
            for l in loans
                .iter()
                .filter(|l| l.disbursed > 0 && l.term == "short")
            {
                before.push(l.rate);
                assert_eq!(l.balance, l.disbursed);
            }
        }
        assert!(!before.is_empty());
        // 4.35% × 0.9 ..= 4.35% × 1.3, in 5% steps
        assert!(
            before
                .iter()
                .all(|&r| (39150..=56550).contains(&r) && r % 2175 == 0),
            "{before:?}"
        );
    }

    #[test]
    fn demands_move_through_the_funnel_in_date_order() {
        let w = world();
        let mut funded = 0;
        for i in 0..w.enterprises {
            let e = w.enterprise(i);
            for q in w.quarters() {
                let ev = w.demand(&e, q);
                for pair in ev.windows(2) {
                    assert!(pair[0].status_on <= pair[1].status_on);
                }
                if let Some(last) = ev.last() {
                    assert!(last.status_on <= w.today());
                    if last.status == "funded" {
                        funded += 1;
                        assert!(last.funded_amount.unwrap() <= last.amount);
                    }
                }
            }
        }
        assert!(funded > 10, "{funded}");
    }
}
