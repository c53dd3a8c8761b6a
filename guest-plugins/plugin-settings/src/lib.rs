//! The settings glue of rotor's default plugins, written once.
//!
//! The host calls `configure` with the bundle's settings (JSON) in every fresh instance, then
//! asks for one decision. A plugin declares where its parsed settings live with
//! [`settings_slot!`], which gives it `configure_settings(json)` for its `configure` export and
//! `with_settings(|s| ...)` for its decision; its own `from_json` starts from [`parse`].

/// Parse a plugin's raw settings: empty text means every default; an error names the field
/// serde could not accept and starts with `settings:`.
pub fn parse<T: serde::de::DeserializeOwned + Default>(json: &str) -> Result<T, String> {
    if json.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(json).map_err(|e| format!("settings: {e}"))
}

/// Declare the instance's settings of type `$ty`, parsed by `$parse(&str) -> Result<$ty,
/// String>`: defines `configure_settings` and `with_settings` in the calling module.
#[macro_export]
macro_rules! settings_slot {
    ($ty:ty, $parse:path) => {
        ::std::thread_local! {
            static SETTINGS: ::std::cell::RefCell<$ty> =
                ::std::cell::RefCell::new(<$ty>::default());
        }

        /// Parse the bundle's settings and keep them for this instance's decision.
        fn configure_settings(json: &str) -> Result<(), String> {
            let parsed = $parse(json)?;
            SETTINGS.with(|s| *s.borrow_mut() = parsed);
            Ok(())
        }

        /// Run `f` with this instance's settings.
        fn with_settings<R>(f: impl FnOnce(&$ty) -> R) -> R {
            SETTINGS.with(|s| f(&s.borrow()))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        days: Option<u32>,
    }

    fn from_json(json: &str) -> Result<Raw, String> {
        parse(json)
    }

    settings_slot!(Raw, from_json);

    #[test]
    fn empty_settings_are_the_defaults_and_errors_name_the_field() {
        assert_eq!(parse::<Raw>("  "), Ok(Raw::default()));
        assert_eq!(parse::<Raw>(r#"{"days": 3}"#), Ok(Raw { days: Some(3) }));
        let err = parse::<Raw>(r#"{"dayz": 3}"#).unwrap_err();
        assert!(err.starts_with("settings: unknown field `dayz`"), "{err}");
    }

    #[test]
    fn configured_settings_are_kept_for_the_decision() {
        configure_settings(r#"{"days": 7}"#).unwrap();
        assert_eq!(with_settings(|s| s.days), Some(7));
        assert!(configure_settings("[").is_err());
    }
}
