//! Topic names and filters (MQTT 5.0 §4.7): what may be published to, what may be subscribed to,
//! shared subscriptions (§4.8.2) and which filter a received topic matches.

/// MQTT strings are at most 65535 bytes long.
const MAX_LEN: usize = 65_535;

/// Checks a topic name a message may be published to: non-empty, at most 65535 bytes, no
/// wildcard (`+`, `#`) and no NUL character.
pub fn validate_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("a topic must not be empty");
    }
    if topic.len() > MAX_LEN {
        return Err("a topic must be at most 65535 bytes long");
    }
    if topic.contains(['+', '#']) {
        return Err("a topic to publish to must not contain the wildcards + or #");
    }
    if topic.contains('\0') {
        return Err("a topic must not contain NUL");
    }
    Ok(())
}

/// Checks a topic filter: non-empty, at most 65535 bytes, no NUL, `+` only as a whole level and
/// `#` only as the whole last level.
pub fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty");
    }
    if filter.len() > MAX_LEN {
        return Err("a topic filter must be at most 65535 bytes long");
    }
    if filter.contains('\0') {
        return Err("a topic filter must not contain NUL");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("# must be the whole last level of a topic filter");
        }
        if level.contains('+') && *level != "+" {
            return Err("+ must be a whole level of a topic filter");
        }
    }
    Ok(())
}

/// Checks the name of a shared-subscription group: non-empty, without `/`, `+`, `#` or NUL.
pub fn validate_group(group: &str) -> Result<(), &'static str> {
    if group.is_empty() {
        return Err("a shared subscription group must not be empty");
    }
    if group.contains(['/', '+', '#', '\0']) {
        return Err("a shared subscription group must not contain /, +, # or NUL");
    }
    Ok(())
}

/// The filter sent in SUBSCRIBE: `$share/<group>/<filter>` for a shared subscription, so the
/// broker gives each matching message to one member of the group only.
pub fn subscription_filter(filter: &str, shared_group: Option<&str>) -> String {
    match shared_group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_string(),
    }
}

/// Whether `topic` matches `filter` (a filter without the `$share/<group>/` prefix). Wildcards
/// in the first level do not match topics starting with `$` (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for (i, f) in filter.split('/').enumerate() {
        if f == "#" {
            return !(i == 0 && topic.starts_with('$'));
        }
        match topic_levels.next() {
            None => return false,
            Some(t) if f == "+" => {
                if i == 0 && t.starts_with('$') {
                    return false;
                }
            }
            Some(t) if t != f => return false,
            Some(_) => {}
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_to_publish_to_have_no_wildcards() {
        assert!(validate_topic("iotsupport/updates/firmware").is_ok());
        assert!(validate_topic("a//b/").is_ok());
        for bad in ["", "a/+/b", "a/#", "a\0b"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic(&"x".repeat(65_536)).is_err());
    }

    #[test]
    fn filters_put_wildcards_only_on_whole_levels() {
        for good in [
            "iotsupport/logsink",
            "a/+/c",
            "+",
            "#",
            "a/#",
            "+/+/#",
            "a//b",
        ] {
            assert!(validate_filter(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a/#/b", "a/b#", "a+/b", "a/+b", "##", "a\0"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shared_subscriptions_prefix_the_group() {
        assert_eq!(
            subscription_filter("iotsupport/logsink", Some("iotsupport")),
            "$share/iotsupport/iotsupport/logsink"
        );
        assert_eq!(subscription_filter("a/b", None), "a/b");
        assert!(validate_group("iotsupport").is_ok());
        for bad in ["", "a/b", "a+", "#", "a\0"] {
            assert!(validate_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_match_topics_level_by_level() {
        let cases = [
            ("iotsupport/logsink", "iotsupport/logsink", true),
            ("iotsupport/logsink", "iotsupport/logsink/x", false),
            ("iotsupport/logsink", "iotsupport", false),
            ("iotsupport/+", "iotsupport/logsink", true),
            ("iotsupport/+", "iotsupport/a/b", false),
            ("iotsupport/+", "iotsupport/", true),
            ("iotsupport/#", "iotsupport", true),
            ("iotsupport/#", "iotsupport/a/b", true),
            ("#", "anything/at/all", true),
            ("+/+", "a/b", true),
            ("+/b", "a/c", false),
            ("#", "$SYS/broker", false),
            ("+/broker", "$SYS/broker", false),
            ("$SYS/#", "$SYS/broker", true),
            ("$SYS/broker", "$SYS/broker", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }
}
