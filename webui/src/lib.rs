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

    #[test]
    fn the_page_loads_only_local_scripts_and_styles() {
        let html = std::str::from_utf8(asset("index.html").unwrap().bytes).unwrap();
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(
            !html.contains("<script>"),
            "no inline scripts: the CSP forbids them"
        );
    }
}
