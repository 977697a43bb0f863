//! Fuzz target: the RoomsAppSettings.config reader (`config::parse_app_settings`) and the whole
//! settings validation (`config::load_from`) over the same text and a fixed environment that
//! carries two secrets.
//!
//! Beyond "never panics", it checks: the loader accepts a file exactly when the reader does, and
//! names the reader's refusal as one problem on one line; a file the reader accepts fails only on
//! its values (each problem one non-empty line, never the file or the merge); keys reported as
//! ignored are unknown keys of the file; the secrets never reach a problem or the
//! `rooms-sync config` report.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rooms_sync::config::{KEYS, load_from, parse_app_settings, report};

/// The name the file is reported under.
const FILE: &str = "fuzz.config";
/// Every secret the environment sets starts with this.
const SECRET_MARK: &str = "FUZZ-SECRET-";

fuzz_target!(|data: &[u8]| {
    // The loader reads the file as a Rust string: non-UTF-8 bytes never reach the reader.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_app_settings(text);
    let env = vec![
        ("EwsPassword".to_owned(), format!("{SECRET_MARK}ews-9d2c41")),
        (
            "AzureClientSecret".to_owned(),
            format!("{SECRET_MARK}azure-41b7e0"),
        ),
    ];
    let loaded = load_from(Some((Path::new(FILE), text)), &env);
    let entries = match (parsed, &loaded) {
        (Err(e), Ok(_)) => panic!("the loader accepted a file the reader refused: {e}"),
        (Err(e), Err(refused)) => {
            // The reader's error, named with the file, as one problem on one line (`rooms-sync
            // config` prints one line per problem).
            assert_eq!(refused.problems.len(), 1, "{refused:?}");
            assert_eq!(refused.problems[0], format!("settings file {FILE}: {e}"));
            assert!(!refused.problems[0].contains('\n'), "{refused:?}");
            return;
        }
        (Ok(entries), _) => entries,
    };
    let file_keys = |key: &str| entries.iter().any(|(k, _)| k == key);
    // A secret found in the output proves a leak only when the input did not write the mark.
    let leaks = |output: &str| output.contains(SECRET_MARK) && !text.contains(SECRET_MARK);
    match &loaded {
        Ok(loaded) => {
            assert!(!loaded.settings.callback_url.is_empty());
            for key in &loaded.ignored_keys {
                assert!(file_keys(key), "ignored key {key:?} is not in the file");
                assert!(
                    !KEYS.iter().any(|k| k.name.eq_ignore_ascii_case(key)),
                    "known key {key:?} reported as ignored"
                );
            }
            let shown = report(loaded).to_string();
            assert!(!leaks(&shown), "a secret in the report: {shown}");
        }
        Err(refused) => {
            assert!(!refused.problems.is_empty());
            for problem in &refused.problems {
                assert!(!problem.is_empty());
                assert!(
                    !problem.contains('\n'),
                    "a problem of several lines: {problem:?}"
                );
                assert!(
                    !problem.starts_with("settings file") && !problem.starts_with("settings could"),
                    "a file the reader accepted was refused as a whole: {problem}"
                );
                assert!(!leaks(problem), "a secret in a problem: {problem}");
            }
        }
    }
});
