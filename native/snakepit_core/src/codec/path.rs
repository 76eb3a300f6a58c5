//! Error paths naming where in an argument tree a value could not be encoded (`"a.b[2]"`).
//!
//! Encoders collect segments while their recursion unwinds, so the innermost segment comes first;
//! the NIF's term decoder and the JSON encoder render them the same way.

/// One step of an error path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment<K> {
    /// A map key.
    Key(K),
    /// A list index.
    Index(usize),
}

/// Renders `prefix` followed by `segments_inner_first` (innermost first), e.g. `args.a[2]`.
pub fn join_path<K: AsRef<str>>(prefix: &str, segments_inner_first: &[PathSegment<K>]) -> String {
    let mut path = String::from(prefix);
    for seg in segments_inner_first.iter().rev() {
        match seg {
            PathSegment::Key(k) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.as_ref());
            }
            PathSegment::Index(i) => {
                path.push('[');
                path.push_str(&i.to_string());
                path.push(']');
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_keys_and_indexes_outermost_first() {
        let segments = [
            PathSegment::Index(2),
            PathSegment::Key("b"),
            PathSegment::Key("a"),
        ];
        assert_eq!(join_path("", &segments), "a.b[2]");
        assert_eq!(join_path("args", &segments), "args.a.b[2]");
        assert_eq!(join_path::<&str>("x", &[]), "x");
    }
}
