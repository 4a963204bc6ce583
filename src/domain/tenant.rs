//! A tenant's name, with one rule applied everywhere (the CLI, the API's `tenant` filter). Its
//! callback signing secret follows the rule of `domain::webhook`.

/// A tenant name: 1 to 100 characters, letters, digits, `-`, `_` and `.`, starting with a
/// letter or a digit (it appears in logs, URLs of tools and shell commands unquoted).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a tenant name: use 1 to 100 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["acme", "tenant-a", "Acme_Corp.eu", "7eleven"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "bad tenant!", "-acme", ".hidden", "a/b", "é", &"a".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
