//! Finds the line of a key in TOML text, for error messages.

/// 1-based line of byte offset `at`.
pub(crate) fn line_at(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// 1-based line where the dotted `key` (e.g. `sla[1].from`, `actors.shards`) is set, or of the
/// closest enclosing table header, or of the table `[key]` itself; 0 when not found.
pub(crate) fn line_of_key(text: &str, key: &str) -> usize {
    match line_in_table(text, key) {
        0 => text
            .lines()
            .position(|line| line.trim().trim_matches(|c| c == '[' || c == ']').trim() == key)
            .map_or(0, |i| i + 1),
        line => line,
    }
}

fn line_in_table(text: &str, key: &str) -> usize {
    // Split `sla[1].from` into the table path (`sla`, occurrence 1) and the field (`from`).
    let (table, field) = match key.rsplit_once('.') {
        Some((table, field)) => (table, field),
        None => (key, ""),
    };
    let (table, occurrence) = match table.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().unwrap_or(0)),
        None => (table, 0usize),
    };
    let mut seen = 0usize;
    let mut in_table = false;
    let mut header_line = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let name = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
            if in_table && header_line != 0 && !name.starts_with(table) {
                break;
            }
            in_table = false;
            if name == table {
                if seen == occurrence {
                    in_table = true;
                    header_line = i + 1;
                }
                seen += 1;
            }
            continue;
        }
        if in_table {
            let lhs = trimmed
                .split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"');
            if !field.is_empty() && lhs == field {
                return i + 1;
            }
        }
    }
    header_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_in_arrays_of_tables() {
        let text =
            "[[sla]]\nname = \"a\"\n[[sla]]\nname = \"b\"\nfrom = \"x\"\n[actors]\nshards = 0\n";
        assert_eq!(line_of_key(text, "sla[1].from"), 5);
        assert_eq!(line_of_key(text, "sla[0].name"), 2);
        assert_eq!(line_of_key(text, "actors.shards"), 7);
        assert_eq!(line_of_key(text, "actors.missing"), 6);
        assert_eq!(line_at(text, 0), 1);
        let nested = "[sources.telegraph]\nurl = 1\n";
        assert_eq!(line_of_key(nested, "sources.telegraph"), 1);
    }
}
