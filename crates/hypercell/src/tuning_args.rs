//! `-O KEY[=VALUE]`, as `wasmtime run -O`: settings that shape the compiled code.

use std::path::Path;

use hypercell_host::BoundsChecks;

/// One `-O` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    /// `signals-based-traps=y|n`: whether out-of-bounds accesses and other traps are
    /// left to the MMU (guard pages) or checked in the code.
    SignalsBasedTraps(bool),
}

/// Parses one `-O` argument.
pub fn parse_tuning(text: &str) -> Result<Tuning, String> {
    let (key, value) = match text.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (text, None),
    };
    match key {
        "signals-based-traps" => match value {
            None | Some("y" | "yes" | "true") => Ok(Tuning::SignalsBasedTraps(true)),
            Some("n" | "no" | "false") => Ok(Tuning::SignalsBasedTraps(false)),
            Some(other) => Err(format!("signals-based-traps takes y or n, not `{other}`")),
        },
        other => Err(format!(
            "`{other}` is not a setting Hypercell knows; -O takes signals-based-traps=y|n"
        )),
    }
}

/// The bounds checks the settings ask for, the last one winning, if any is given.
pub fn bounds_checks(tunings: &[Tuning]) -> Option<BoundsChecks> {
    tunings.iter().next_back().map(|tuning| match tuning {
        Tuning::SignalsBasedTraps(true) => BoundsChecks::GuardPages,
        Tuning::SignalsBasedTraps(false) => BoundsChecks::Explicit,
    })
}

/// Refuses settings that ask for other bounds checks than `kept`, those of the
/// template at `path`, which its cells keep: the sentence names the fix.
pub fn keep_template_checks(
    tunings: &[Tuning],
    kept: BoundsChecks,
    path: &Path,
) -> Result<(), String> {
    match bounds_checks(tunings) {
        Some(asked) if asked != kept => Err(format!(
            "`{}` was compiled with {} bounds checks, which its cells keep; make the template with {} instead",
            path.display(),
            kept.name(),
            flag_for(asked)
        )),
        _ => Ok(()),
    }
}

/// The `-O` setting that asks for `checks`, as a user would write it.
fn flag_for(checks: BoundsChecks) -> &'static str {
    match checks {
        BoundsChecks::GuardPages => "-O signals-based-traps=y",
        BoundsChecks::Explicit => "-O signals-based-traps=n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_as_wasmtime_writes_them() {
        assert_eq!(
            parse_tuning("signals-based-traps=n"),
            Ok(Tuning::SignalsBasedTraps(false))
        );
        assert_eq!(
            parse_tuning("signals-based-traps"),
            Ok(Tuning::SignalsBasedTraps(true))
        );
        assert!(parse_tuning("signals-based-traps=maybe").is_err());
        assert!(
            parse_tuning("opt-level=2")
                .unwrap_err()
                .contains("opt-level")
        );
        let both = [
            Tuning::SignalsBasedTraps(false),
            Tuning::SignalsBasedTraps(true),
        ];
        assert_eq!(bounds_checks(&both), Some(BoundsChecks::GuardPages));
        assert_eq!(bounds_checks(&[]), None);
    }
}
