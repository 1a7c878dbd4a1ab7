//! `hearth-webui`: the browser UI's static files, compiled into `hearthd`.
//!
//! Plain HTML, CSS and JavaScript from this repository: no CDN, no external fonts, no build
//! step. Files are served from a fixed table by name, so no request path ever reaches the
//! file system. This crate must never hold server logic.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $mime:literal),* $(,)?) => {
        const ASSETS: &[(&str, Asset)] = &[$(
            ($name, Asset {
                content_type: $mime,
                bytes: include_bytes!(concat!("../assets/", $name)),
            }),
        )*];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "dom.js" => "text/javascript; charset=utf-8",
    "auth.js" => "text/javascript; charset=utf-8",
    "chat.js" => "text/javascript; charset=utf-8",
    "models.js" => "text/javascript; charset=utf-8",
    "system.js" => "text/javascript; charset=utf-8",
    "settings.js" => "text/javascript; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
}

/// The file called `name`, if the UI has one.
pub fn asset(name: &str) -> Option<Asset> {
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_files_resolve_and_paths_do_not() {
        assert!(asset("index.html").is_some());
        assert!(
            asset("app.js")
                .unwrap()
                .content_type
                .starts_with("text/javascript")
        );
        for bad in [
            "../Cargo.toml",
            "/etc/passwd",
            "",
            "assets/app.js",
            "app.js\0",
        ] {
            assert!(asset(bad).is_none(), "{bad}");
        }
    }

    /// Every `./x.js` a module imports and every `/assets/x` the page names is in the table, so
    /// a file added to `assets/` but not to the table fails here rather than in a browser.
    #[test]
    fn every_referenced_file_is_served() {
        let mut checked = 0;
        for (name, a) in ASSETS {
            let text = std::str::from_utf8(a.bytes).unwrap_or("");
            for (pat, end) in [("\"./", '"'), ("\"/assets/", '"')] {
                for (i, _) in text.match_indices(pat) {
                    let rest = &text[i + pat.len()..];
                    let Some(len) = rest.find(end) else { continue };
                    let file = &rest[..len];
                    assert!(
                        asset(file).is_some(),
                        "{name} refers to {file}, not in the table"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "found only {checked} references");
    }

    /// The only HTML the UI inserts is a message's server-sanitized `html`, in chat.js.
    #[test]
    fn only_chat_js_inserts_html() {
        for (name, a) in ASSETS {
            let text = std::str::from_utf8(a.bytes).unwrap_or("");
            for risky in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                let n = text.matches(risky).count();
                let allowed = usize::from(*name == "chat.js" && risky == "innerHTML");
                assert!(n <= allowed, "{name} uses {risky} {n} times");
            }
            // (An SVG's xmlns is a name, not a load.)
            let text = text.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name} names an outside address"
            );
        }
    }

    #[test]
    fn the_page_loads_only_local_scripts_and_styles() {
        let html = std::str::from_utf8(asset("index.html").unwrap().bytes).unwrap();
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(
            !html.contains("<script>"),
            "no inline scripts: the CSP forbids them"
        );
        assert!(
            !html.contains(" style="),
            "no inline styles: the CSP forbids them"
        );
    }
}
