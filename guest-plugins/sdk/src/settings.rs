//! The bundle's settings, parsed once into your type.
//!
//! The host calls the plugin's `configure` export with the bundle's `settings` table as JSON.
//! Since `rotor:policy@0.2.0` that happens once per loaded plugin, and every decision starts from
//! a snapshot taken after it: parse in `configure` with [`configure`], read in the decision with
//! [`with`]. Errors name the field (`settings.profiles.a.max_days: invalid type: ...`), which the
//! host shows the operator as the bundle's load error.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

/// A plugin's settings type: how the bundle's JSON becomes it. For a serde type, [`parse`]
/// does it with errors that name the field:
///
/// ```
/// #[derive(Default, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Window { renew_before_days: Option<u32> }
///
/// impl rotor_policy_sdk::settings::Settings for Window {
///     fn from_json(json: &str) -> Result<Self, String> {
///         let window: Window = rotor_policy_sdk::settings::parse(json)?;
///         if window.renew_before_days == Some(0) {
///             return Err("settings.renew_before_days: must be at least 1".into());
///         }
///         Ok(window)
///     }
/// }
/// ```
pub trait Settings: Sized + Default + 'static {
    /// Parse and check the bundle's JSON (`{}` when the bundle gives none); an error should
    /// name the field.
    fn from_json(json: &str) -> Result<Self, String>;
}

/// Parse `json` into `T` with serde: empty text means `T::default()`; an error starts with
/// `settings` and the path of the field serde could not accept.
pub fn parse<T: serde::de::DeserializeOwned + Default>(json: &str) -> Result<T, String> {
    if json.trim().is_empty() {
        return Ok(T::default());
    }
    let de = &mut serde_json::Deserializer::from_str(json);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(value) => Ok(value),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." || path == "?" {
                Err(format!("settings: {inner}"))
            } else if path.starts_with('[') {
                Err(format!("settings{path}: {inner}"))
            } else {
                Err(format!("settings.{path}: {inner}"))
            }
        }
    }
}

thread_local! {
    // A wasm plugin is one thread: this is a static. On the host target each test thread has
    // its own, so unit tests that configure different settings do not race.
    static CURRENT: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

/// Parse the bundle's settings into `S` and keep them for the decisions: call it from your
/// `configure` export.
pub fn configure<S: Settings>(json: &str) -> Result<(), String> {
    let parsed = S::from_json(json)?;
    CURRENT.with(|c| *c.borrow_mut() = Some(Rc::new(parsed)));
    Ok(())
}

/// Run `f` with the configured settings (`S::default()` when `configure` was not called, or
/// was called with another type).
pub fn with<S: Settings, R>(f: impl FnOnce(&S) -> R) -> R {
    let current = CURRENT.with(|c| c.borrow().clone());
    match current.as_ref().and_then(|s| s.downcast_ref::<S>()) {
        Some(s) => f(s),
        None => f(&S::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        days: Option<u32>,
        #[serde(default)]
        profiles: std::collections::BTreeMap<String, Profile>,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Profile {
        max_days: u32,
    }

    impl Settings for Raw {
        fn from_json(json: &str) -> Result<Self, String> {
            let raw: Raw = parse(json)?;
            match raw.days {
                Some(0) => Err("settings.days: must be at least 1".into()),
                _ => Ok(raw),
            }
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(parse::<Raw>("  "), Ok(Raw::default()));
        let err = parse::<Raw>(r#"{"dayz": 3}"#).unwrap_err();
        assert!(
            err.starts_with("settings.dayz: unknown field `dayz`"),
            "{err}"
        );
        let err = parse::<Raw>(r#"{"profiles": {"a": {"max_days": "x"}}}"#).unwrap_err();
        assert!(
            err.starts_with("settings.profiles.a.max_days: invalid type"),
            "{err}"
        );
        let err = Raw::from_json(r#"{"days": 0}"#).unwrap_err();
        assert_eq!(err, "settings.days: must be at least 1");
    }

    #[test]
    fn configured_settings_are_kept_for_the_decision() {
        assert_eq!(with(|s: &Raw| s.days), None);
        configure::<Raw>(r#"{"days": 7}"#).unwrap();
        assert_eq!(with(|s: &Raw| s.days), Some(7));
        assert!(configure::<Raw>("[").is_err());
        assert_eq!(
            with(|s: &Raw| s.days),
            Some(7),
            "a refused configure keeps the last"
        );
    }
}
