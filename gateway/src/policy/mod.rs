//! Policy stages of the pipeline that decide whether a request may go on: limits, API-key
//! authentication and rate limits. The smuggling guard and the WAF (issue #5) join here.

pub mod auth;
pub mod head_checks;
pub mod limits;
pub mod rate_limit;
pub mod smuggling;
