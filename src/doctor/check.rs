//! One line of `registrar doctor`: a check's name and its outcome, with the fix for a failure.

use std::fmt;

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; what was found.
    Ok(String),
    /// Broken: what is wrong and how to fix it.
    Fail {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// Not checked (an earlier check failed, or it does not apply); why.
    Skip(String),
}

/// One check and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `etcd reachable`.
    pub name: String,
    /// The outcome.
    pub outcome: Outcome,
}

impl Check {
    /// A passed check.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Ok(detail.into()),
        }
    }

    /// A failed check.
    pub fn fail(
        name: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Fail {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }

    /// A skipped check.
    pub fn skip(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Skip(why.into()),
        }
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }
}

/// `ok   <name>: <detail>`, `FAIL <name>: <problem> -- fix: <fix>`, `skip <name>: <why>`.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Ok(detail) => write!(f, "ok    {}: {detail}", self.name),
            Outcome::Fail { problem, fix } => {
                write!(f, "FAIL  {}: {problem} -- fix: {fix}", self.name)
            }
            Outcome::Skip(why) => write!(f, "skip  {}: {why}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_check_with_the_fix_for_a_failure() {
        assert_eq!(
            Check::ok("etcd reachable", "3.6.16").to_string(),
            "ok    etcd reachable: 3.6.16"
        );
        let fail = Check::fail("etcd auth", "authentication failed", "check the password");
        assert!(fail.failed());
        assert_eq!(
            fail.to_string(),
            "FAIL  etcd auth: authentication failed -- fix: check the password"
        );
        assert!(!Check::skip("x", "y").failed());
        assert!(!Check::ok("x", "y").to_string().contains('\n'));
    }
}
