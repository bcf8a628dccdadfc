//! The list filters shared by every kind: exact names, name prefixes, id prefixes and labels.
//! An empty filter matches everything; a filter with several values matches any of them.

use std::collections::HashMap;

/// True when `prefixes` is empty or `id` starts with one of them.
pub fn id_matches(id: &str, prefixes: &[String]) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| id.starts_with(p.as_str()))
}

/// True when both name filters are empty, or `name` equals one of `names` or starts with one
/// of `prefixes`.
pub fn name_matches(name: &str, names: &[String], prefixes: &[String]) -> bool {
    if names.is_empty() && prefixes.is_empty() {
        return true;
    }
    names.iter().any(|n| n == name) || prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// True when every wanted label is present; an empty wanted value matches any value.
pub fn labels_match(labels: &HashMap<String, String>, wanted: &HashMap<String, String>) -> bool {
    wanted
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|have| v.is_empty() || have == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_docker() {
        assert!(id_matches("abcdef", &[]));
        assert!(id_matches("abcdef", &["zz".into(), "abc".into()]));
        assert!(!id_matches("abcdef", &["bc".into()]));
        assert!(name_matches("web", &[], &[]));
        assert!(name_matches("stack_web", &[], &["stack_".into()]));
        assert!(!name_matches("web2", &["web".into()], &[]));
        let labels: HashMap<String, String> =
            [("zone".to_owned(), "a".to_owned())].into_iter().collect();
        assert!(labels_match(&labels, &HashMap::new()));
        assert!(labels_match(
            &labels,
            &[("zone".to_owned(), String::new())].into_iter().collect()
        ));
        assert!(!labels_match(
            &labels,
            &[("zone".to_owned(), "b".to_owned())].into_iter().collect()
        ));
        assert!(!labels_match(
            &labels,
            &[("rack".to_owned(), String::new())].into_iter().collect()
        ));
    }
}
