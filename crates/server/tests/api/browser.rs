//! End-to-end tests of the web page in real headless Chromium (through chromedriver):
//! upload a real cat and a real dog photo (copied to `cat.jpg` and `dog.jpg`) through the
//! file input and check each card's label, drop a non-image, say "right" on one card and
//! "wrong" on the other, sign in and see one right and one wrong verdict on the dashboard,
//! check escaping and the phone layout, and save screenshots under `target/screenshots/`.
//! Registered with `Need::Chromium` and `Need::Photos`.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestApp};

/// Flags from the project guide: no sandbox (root in CI), no GPU, no background traffic.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// The photos the tests upload, relative to the photo folder.
const CAT_PHOTO: &str = "cat/1.jpg";
const DOG_PHOTO: &str = "dog/1.jpg";
const HOSTILE_PHOTO: &str = "cat/2.jpg";

/// A file name that is HTML.
const HOSTILE: &str = "<img src=x onerror=alert(1)>.jpg";

/// A chromedriver process on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(driver: &Path) -> Driver {
    let port = catsdogs_testkit::free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d
}

/// The app (serving the shipped default model), chromedriver, and a Chromium session with a
/// fresh profile, on the home page.
struct Browser {
    c: Client,
    app: TestApp,
    /// Canonical temp folder (chromedriver only accepts canonical paths for uploads).
    root: PathBuf,
    photos: PathBuf,
    _driver: Driver,
    _dir: tempfile::TempDir,
}

impl Browser {
    async fn open() -> Self {
        let chromium = catsdogs_testkit::which("chromium", "CATSDOGS_CHROMIUM").expect("chromium");
        let driver_bin = catsdogs_testkit::which("chromedriver", "CATSDOGS_CHROMEDRIVER").expect("chromedriver");
        let photos = catsdogs_testkit::photos().canonicalize().expect("canonical photo folder");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let app = TestApp::spawn_with(|cfg| {
            cfg.model_dir = catsdogs_testkit::default_model_dir();
            cfg.max_upload_bytes = 2 * 1024 * 1024;
            cfg.inference_threads = 2;
        })
        .await;
        let driver = start_driver(&driver_bin).await;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", root.join("profile").display()));
        args.push("--window-size=1280,1000".into());
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("start a Chromium session");
        c.goto(&app.url("/")).await.expect("open home");
        Self { c, app, root, photos, _driver: driver, _dir: dir }
    }

    async fn close(self) {
        self.c.close().await.expect("close browser");
        self.app.stop().await;
    }

    async fn js(&self, script: &str) -> Value {
        js(&self.c, script).await
    }

    /// Chooses files in the file input: the photos at `photo`, copied to `as_name`.
    async fn upload(&self, files: &[(&str, &str)]) {
        let mut paths = Vec::new();
        for (photo, as_name) in files {
            let path = self.root.join(as_name);
            std::fs::copy(self.photos.join(photo), &path).unwrap_or_else(|e| panic!("copy {photo}: {e}"));
            paths.push(path.display().to_string());
        }
        let input = self.c.find(Locator::Css("#file")).await.expect("file input");
        input.send_keys(&paths.join("\n")).await.expect("choose files");
    }

    /// Uploads a real cat and a real dog photo, under names that say which is which (both
    /// originals are called `1.jpg`); waits for both results.
    async fn upload_cat_and_dog(&self) -> Vec<Value> {
        self.upload(&[(CAT_PHOTO, "cat.jpg"), (DOG_PHOTO, "dog.jpg")]).await;
        wait_cards(&self.c, "two predictions", |cs| {
            cs.len() == 2 && cs.iter().all(|x| !x["pending"].as_bool().unwrap_or(true))
        })
        .await
    }

    /// "Right" on the cat card, "wrong, it's a cat" on the dog card, each confirmed.
    async fn judge_cat_and_dog(&self) -> Vec<Value> {
        feedback_button(&self.c, "cat.jpg", "correct").await.click().await.expect("click right on cat.jpg");
        wait_cards(&self.c, "the confirmation on cat.jpg", |cs| feedback_settled(cs, "cat.jpg")).await;
        feedback_button(&self.c, "dog.jpg", "wrong").await.click().await.expect("click wrong on dog.jpg");
        wait_cards(&self.c, "the confirmation on dog.jpg", |cs| feedback_settled(cs, "dog.jpg")).await
    }

    /// Drops a text file on the drop zone; waits for its error.
    async fn drop_text_file(&self) -> Vec<Value> {
        self.js(
            "const dt = new DataTransfer();
             dt.items.add(new File(['this is not an image'], 'notes.txt', {type: 'text/plain'}));
             document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
             return true;",
        )
        .await;
        wait_cards(&self.c, "the error for notes.txt", |cs| {
            card(cs, "notes.txt").is_some_and(|x| !x["error"].is_null())
        })
        .await
    }

    /// Uploads a cat photo under [`HOSTILE`]'s name; waits for its result.
    async fn upload_hostile(&self) -> Vec<Value> {
        self.upload(&[(HOSTILE_PHOTO, HOSTILE)]).await;
        wait_cards(&self.c, "the hostile file's result", |cs| {
            card(cs, HOSTILE).is_some_and(|x| !x["pending"].as_bool().unwrap_or(true))
        })
        .await
    }

    /// Everything a visitor does on the home page: cat and dog, their verdicts, a text
    /// file, a hostile name.
    async fn fill_the_home_page(&self) {
        self.upload_cat_and_dog().await;
        self.judge_cat_and_dog().await;
        self.drop_text_file().await;
        self.upload_hostile().await;
    }

    /// Narrows the window to a phone's width and checks there is no horizontal scrolling.
    async fn check_phone_width(&self, what: &str) {
        self.c.set_window_size(375, 812).await.expect("resize");
        let (inner, scroll) =
            (self.js("return window.innerWidth").await, self.js("return document.documentElement.scrollWidth").await);
        assert!(inner.as_u64().is_some_and(|w| w <= 400), "viewport not narrowed: {inner}");
        assert!(scroll.as_u64() <= inner.as_u64(), "{what} scrolls sideways at phone width: {scroll} > {inner}");
    }
}

/// Where screenshots go: `$CARGO_TARGET_DIR/screenshots` (a relative one taken from the
/// workspace root), else `target/screenshots` in the workspace.
fn screenshot_dir() -> PathBuf {
    let workspace = catsdogs_testkit::repo();
    let target = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(t) if t.is_absolute() => t,
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    };
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Saves a PNG of the current view as `target/screenshots/{name}`.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: the screenshot is not a PNG");
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("screenshot saved: {}", path.display());
}

/// What the result cards show, read in one script call.
async fn cards(c: &Client) -> Vec<Value> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('#results .card')).map(li => ({
                name: ((li.querySelector('.name') || {}).textContent || '').trim() || null,
                label: (li.querySelector('.verdict [class^=label-]') || {}).textContent || null,
                error: (li.querySelector('.err') || {}).textContent || null,
                pending: li.classList.contains('pending'),
                feedback: (li.querySelector('.fb-status') || {}).textContent || null,
                id: li.dataset.predictionId || null,
            }));",
            vec![],
        )
        .await
        .expect("read cards");
    v.as_array().cloned().unwrap_or_default()
}

/// Polls `cards` until `done` holds (the model runs on CPU: allow a generous minute).
async fn wait_cards(c: &Client, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = cards(c).await;
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; cards: {now:#?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn card<'a>(cards: &'a [Value], name: &str) -> Option<&'a Value> {
    cards.iter().find(|c| c["name"] == name)
}

/// The text of field `field` on the card showing file `name`, if any.
fn card_field<'a>(cards: &'a [Value], name: &str, field: &str) -> Option<&'a str> {
    card(cards, name).and_then(|x| x[field].as_str())
}

/// Whether the feedback sent from the card of `name` has been answered (saved or not).
fn feedback_settled(cards: &[Value], name: &str) -> bool {
    card_field(cards, name, "feedback").is_some_and(|f| !f.starts_with("Sending"))
}

/// The feedback button (`data-feedback` = `correct` or `wrong`) of the result card whose
/// displayed file name is exactly `name` (no quote in it).
async fn feedback_button(c: &Client, name: &str, verdict: &str) -> Element {
    card_button(c, name, &format!("@data-feedback='{verdict}'")).await
}

/// The button matching the XPath predicate `which` on the result card of file `name`.
async fn card_button(c: &Client, name: &str, which: &str) -> Element {
    let xpath = format!(
        "//*[@id='results']/li[.//*[contains(concat(' ', normalize-space(@class), ' '), ' name ') \
         and normalize-space(.)='{name}']]//button[{which}]"
    );
    c.find(Locator::XPath(&xpath)).await.unwrap_or_else(|e| panic!("the button [{which}] of {name}: {e}"))
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

/// The page loads with its assets, under a strict CSP, and never contains the token.
pub async fn the_page_runs_its_script_and_never_holds_the_token() {
    let b = Browser::open().await;
    let source = b.c.source().await.expect("source");
    assert!(!source.contains(TOKEN), "the page must not expose the API token");
    assert_eq!(b.js("return document.documentElement.classList.contains('js')").await, json!(true));
    b.close().await;
}

pub async fn each_uploaded_photo_gets_a_card_with_its_own_label() {
    let b = Browser::open().await;
    let now = b.upload_cat_and_dog().await;
    assert_eq!(card_field(&now, "cat.jpg", "label"), Some("Cat"), "the cat.jpg card: {now:#?}");
    assert_eq!(card_field(&now, "dog.jpg", "label"), Some("Dog"), "the dog.jpg card: {now:#?}");
    assert!(now.iter().all(|x| x["error"].is_null()), "{now:#?}");
    let (cat_id, dog_id) = (card_field(&now, "cat.jpg", "id"), card_field(&now, "dog.jpg", "id"));
    assert!(cat_id.is_some() && dog_id.is_some() && cat_id != dog_id, "two distinct prediction ids: {now:#?}");
    let img_alt =
        b.js("return Array.from(document.querySelectorAll('#results img')).every(i => i.alt.length > 0)").await;
    assert_eq!(img_alt, json!(true), "every preview has an alt text");
    b.close().await;
}

/// "Right" on the cat card, "wrong, it's a cat" on the dog card: each waits for the
/// confirmation the page shows once the server has saved it, and marks only its card.
pub async fn feedback_buttons_confirm_and_mark_only_their_own_card() {
    let b = Browser::open().await;
    b.upload_cat_and_dog().await;
    let cat_right = feedback_button(&b.c, "cat.jpg", "correct").await;
    let label = cat_right.text().await.expect("button text");
    assert!(label.contains("Right"), "thumbs-up button: {label:?}");
    cat_right.click().await.expect("click right on cat.jpg");
    let now = wait_cards(&b.c, "the confirmation on cat.jpg", |cs| feedback_settled(cs, "cat.jpg")).await;
    assert_eq!(card_field(&now, "cat.jpg", "feedback"), Some("Thanks! Feedback saved."), "{now:#?}");
    assert_eq!(cat_right.attr("aria-pressed").await.expect("attr").as_deref(), Some("true"));

    let dog_wrong = feedback_button(&b.c, "dog.jpg", "wrong").await;
    let label = dog_wrong.text().await.expect("button text");
    assert!(label.contains("Wrong") && label.ends_with("it's a cat"), "wrong button of the dog card: {label:?}");
    dog_wrong.click().await.expect("click wrong on dog.jpg");
    let now = wait_cards(&b.c, "the confirmation on dog.jpg", |cs| feedback_settled(cs, "dog.jpg")).await;
    assert_eq!(card_field(&now, "dog.jpg", "feedback"), Some("Thanks! Noted: it is a cat."), "{now:#?}");
    assert_eq!(dog_wrong.attr("aria-pressed").await.expect("attr").as_deref(), Some("true"));
    let dog_right = feedback_button(&b.c, "dog.jpg", "correct").await;
    assert_eq!(dog_right.attr("aria-pressed").await.expect("attr").as_deref(), Some("false"));
    // The other card's verdict is untouched.
    assert_eq!(card_field(&now, "cat.jpg", "feedback"), Some("Thanks! Feedback saved."), "{now:#?}");
    b.close().await;
}

/// A text file dropped on the drop zone: an error next to that file only.
pub async fn a_dropped_text_file_fails_alone() {
    let b = Browser::open().await;
    b.upload_cat_and_dog().await;
    let now = b.drop_text_file().await;
    let err = card(&now, "notes.txt").and_then(|x| x["error"].as_str()).unwrap_or_default().to_string();
    assert!(err.to_lowercase().contains("image"), "error should say it is not an image: {err}");
    assert_eq!(now.iter().filter(|x| !x["error"].is_null()).count(), 1, "only that file failed: {now:#?}");
    b.close().await;
}

/// A hostile file name is shown as text, never parsed as HTML.
pub async fn a_hostile_file_name_is_shown_as_text() {
    let b = Browser::open().await;
    let now = b.upload_hostile().await;
    assert_eq!(card(&now, HOSTILE).and_then(|x| x["label"].as_str()), Some("Cat"));
    assert_eq!(b.js("return document.querySelectorAll('img[src=\"x\"]').length").await, json!(0));
    assert!(b.c.get_alert_text().await.is_err(), "no alert may have opened");
    b.close().await;
}

/// With every kind of card on it, the home page does not scroll sideways at phone width;
/// screenshots of it for the docs.
pub async fn the_home_page_fits_a_phone_screen() {
    let b = Browser::open().await;
    b.fill_the_home_page().await;
    screenshot(&b.c, "home-desktop.png").await;
    // For docs/img: the same view with the photo previews blurred (the training photos are
    // not redistributed with the repository).
    b.js("document.querySelectorAll('img.thumb').forEach(i => { i.style.filter = 'blur(14px)'; }); return true;").await;
    screenshot(&b.c, "home-desktop-blurred.png").await;
    b.js("document.querySelectorAll('img.thumb').forEach(i => { i.style.filter = ''; }); return true;").await;
    b.check_phone_width("the home page").await;
    screenshot(&b.c, "home-phone.png").await;
    b.close().await;
}

/// "Why?" on the cat card draws the answer's heatmap over its preview (a canvas with
/// painted pixels, no CSP violation), with a legend and a summary in words; a second click
/// hides it. Screenshots for docs/img.
pub async fn why_draws_the_heatmap_over_the_preview() {
    let b = Browser::open().await;
    b.js("window.__csp = []; document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective)); return true;").await;
    b.upload_cat_and_dog().await;
    let why = card_button(&b.c, "cat.jpg", "contains(@class, 'why')").await;
    assert_eq!(why.text().await.expect("text"), "Why?");
    why.click().await.expect("click Why?");
    const STATE: &str = "const li = Array.from(document.querySelectorAll('#results .card'))
                  .find(l => l.querySelector('.name').textContent === 'cat.jpg');
              const c = li.querySelector('canvas.heat');
              let painted = 0;
              if (c) {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted += 1;
              }
              const img = li.querySelector('img.thumb');
              return {
                canvas: !!c, shown: !!c && !c.hidden && c.getBoundingClientRect().width > 0,
                covers: !!c && Math.abs(c.getBoundingClientRect().width - img.getBoundingClientRect().width) < 1,
                painted, pixels: c ? c.width * c.height : 0,
                summary: li.querySelector('.why-summary').textContent,
                summary_shown: !li.querySelector('.why-summary').hidden,
                legend_shown: !li.querySelector('.why-legend').hidden,
                pressed: li.querySelector('button.why').getAttribute('aria-pressed'),
                csp: window.__csp,
              };";
    let on = b.js(STATE).await;
    assert_eq!(on["canvas"], json!(true), "{on}");
    assert_eq!(on["shown"], json!(true), "{on}");
    assert_eq!(on["covers"], json!(true), "the heatmap covers the preview: {on}");
    assert!(on["painted"].as_u64().unwrap_or(0) * 4 > on["pixels"].as_u64().unwrap_or(0), "mostly painted: {on}");
    let summary = on["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("What made the model say Cat: "), "{on}");
    assert!(summary.contains("photo"), "{on}");
    assert_eq!((on["summary_shown"].clone(), on["legend_shown"].clone()), (json!(true), json!(true)), "{on}");
    assert_eq!(on["pressed"], json!("true"));
    assert_eq!(on["csp"], json!([]), "no Content-Security-Policy violation: {on}");
    // Tall enough to show the card's legend and summary under the preview.
    b.c.set_window_size(1280, 1250).await.expect("resize");
    screenshot(&b.c, "why-desktop.png").await;
    b.js("document.querySelectorAll('img.thumb').forEach(i => { i.style.filter = 'blur(14px)'; }); return true;").await;
    screenshot(&b.c, "why-desktop-blurred.png").await;
    why.click().await.expect("click Why? again");
    let off = b.js(STATE).await;
    assert_eq!((off["shown"].clone(), off["pressed"].clone()), (json!(false), json!("false")), "{off}");
    b.close().await;
}

/// The dashboard needs an operator: sign in with the token, then see the predictions and
/// the verdicts counted, under pseudonyms, also at phone width.
pub async fn the_dashboard_counts_the_verdicts_after_sign_in() {
    let b = Browser::open().await;
    b.fill_the_home_page().await;
    let c = &b.c;
    c.goto(&b.app.url("/dashboard")).await.expect("open dashboard");
    let url = c.current_url().await.expect("url");
    assert_eq!(url.path(), "/login", "dashboard must ask for sign-in");
    c.find(Locator::Css("#token")).await.expect("token field").send_keys(TOKEN).await.expect("type token");
    c.find(Locator::Css("form.stack button[type=submit]")).await.expect("submit").click().await.expect("sign in");
    c.wait().for_element(Locator::Css("#tile-feedback")).await.expect("dashboard after sign-in");
    assert_eq!(c.current_url().await.expect("url").path(), "/dashboard");
    let tile =
        |id: &'static str| async move { c.find(Locator::Id(id)).await.expect("tile").text().await.expect("tile text") };
    assert_eq!(tile("tile-predictions").await, "4", "cat + dog + text file + hostile name");
    // One right (cat.jpg) and one wrong (dog.jpg) verdict, exactly as the tile words it.
    assert_eq!(tile("tile-feedback").await.replace('\u{a0}', " "), "1 right · 1 wrong", "feedback counted");
    assert_eq!(tile("tile-satisfaction").await.replace('\u{a0}', " "), "50.0 %", "1 right of 2 verdicts");
    assert_eq!(b.js("return document.querySelectorAll('svg.chart').length").await, json!(5));
    let dash = c.source().await.expect("dashboard source");
    assert!(!dash.contains(HOSTILE) && !dash.contains("onerror"), "the dashboard shows pseudonyms only");
    assert!(!dash.contains("cat.jpg") && !dash.contains("dog.jpg"), "the dashboard shows pseudonyms only");
    // The latest predictions, cell texts per row: time, file, result, P(dog), latency, feedback.
    let rows = b
        .js("return Array.from(document.querySelectorAll('#recent tbody tr'))
            .map(tr => Array.from(tr.cells).map(td => td.textContent.trim()));")
        .await;
    let rows: Vec<Vec<String>> = serde_json::from_value(rows).expect("rows of the latest predictions");
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert!(rows.iter().all(|r| r.len() == 6), "six cells a row: {rows:#?}");
    assert!(
        rows.iter().all(|r| r[1].starts_with("upload-") && r[1].len() <= "upload-0123456789abcdef.jpeg".len()),
        "pseudonymised names only: {rows:#?}"
    );
    // The cat got the "right", the (only) dog the "wrong"; the other two rows have none.
    let mut verdicts: Vec<(&str, &str)> =
        rows.iter().filter(|r| r[5] != "—").map(|r| (r[2].as_str(), r[5].as_str())).collect();
    verdicts.sort_unstable();
    assert_eq!(verdicts, [("cat", "✓ right"), ("dog", "✗ wrong")], "verdicts on the dashboard: {rows:#?}");
    assert_eq!(rows.iter().filter(|r| r[5] == "—").count(), 2, "{rows:#?}");
    screenshot(c, "dashboard-desktop.png").await;
    b.check_phone_width("the dashboard").await;
    screenshot(c, "dashboard-phone.png").await;
    b.close().await;
}

/// A photo kept with consent and reported wrong gets a "why?" link on the dashboard: the
/// operator sees the photo with the served model's heatmap over it; visitors do not.
pub async fn a_wrong_answer_on_a_kept_photo_links_its_heatmap_on_the_dashboard() {
    let b = Browser::open().await;
    let c = &b.c;
    c.find(Locator::Css("#consent")).await.expect("consent box").click().await.expect("consent");
    b.upload_cat_and_dog().await;
    feedback_button(c, "dog.jpg", "wrong").await.click().await.expect("click wrong on dog.jpg");
    wait_cards(c, "the confirmation on dog.jpg", |cs| feedback_settled(cs, "dog.jpg")).await;
    // A visitor cannot open the photo.
    let ids =
        b.js("return Array.from(document.querySelectorAll('#results .card')).map(li => li.dataset.predictionId)").await;
    let dog_id =
        cards(c).await.iter().find(|x| x["name"] == "dog.jpg").and_then(|x| x["id"].as_str().map(String::from));
    let dog_id = dog_id.unwrap_or_else(|| panic!("dog card id: {ids}"));
    let cat_id =
        cards(c).await.iter().find(|x| x["name"] == "cat.jpg").and_then(|x| x["id"].as_str().map(String::from));
    let cat_id = cat_id.unwrap_or_else(|| panic!("cat card id: {ids}"));
    let anonymous = reqwest::Client::new()
        .get(b.app.url(&format!("/dashboard/why/{dog_id}/image")))
        .send()
        .await
        .expect("get image");
    assert!(anonymous.url().path() == "/login" || !anonymous.status().is_success(), "visitors must not see the photo");
    c.goto(&b.app.url("/login?next=/dashboard")).await.expect("login page");
    c.find(Locator::Css("#token")).await.expect("token field").send_keys(TOKEN).await.expect("type token");
    c.find(Locator::Css("form.stack button[type=submit]")).await.expect("submit").click().await.expect("sign in");
    c.wait().for_element(Locator::Css("#recent")).await.expect("dashboard after sign-in");
    let links = b
        .js("return Array.from(document.querySelectorAll('#recent a.why-link')).map(a => a.getAttribute('href'))")
        .await;
    assert_eq!(links, json!([format!("/dashboard/why/{dog_id}")]), "one link, for the wrong answer on a kept photo");
    c.find(Locator::Css("#recent a.why-link")).await.expect("link").click().await.expect("open why page");
    c.wait().for_element(Locator::Css("#why-view canvas.heat")).await.expect("the heatmap is drawn");
    let view = b
        .js("const c = document.querySelector('#why-view canvas.heat');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let painted = 0;
             for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted += 1;
             const img = document.querySelector('#why-view img.photo');
             return { painted, pixels: c.width * c.height, loaded: img.naturalWidth > 0,
                      summary: document.getElementById('why-summary').textContent,
                      text: document.querySelector('main').textContent };")
        .await;
    assert_eq!(view["loaded"], json!(true), "the operator sees the photo: {view}");
    assert!(view["painted"].as_u64().unwrap_or(0) * 4 > view["pixels"].as_u64().unwrap_or(0), "{view}");
    assert!(view["summary"].as_str().is_some_and(|s| s.starts_with("What made the model say Dog")), "{view}");
    let version = b.app.state.model_version();
    assert!(view["text"].as_str().is_some_and(|t| t.contains(&version)), "labelled with the served version: {view}");
    let audit = b.app.state.store.audit_entries(10).await.expect("audit");
    let target = format!("prediction {dog_id}: explanation page");
    assert!(audit.iter().any(|a| a.action == "explain" && a.detail.as_deref() == Some(target.as_str())), "{audit:?}");
    // A kept photo without a "wrong" verdict has no such page, even for an operator.
    c.goto(&b.app.url(&format!("/dashboard/why/{cat_id}"))).await.expect("open");
    assert!(b.js("return document.querySelector('#why-view') === null").await == json!(true));
    b.close().await;
}

/// The API docs render under their Content-Security-Policy.
pub async fn the_api_docs_render_under_their_csp() {
    let b = Browser::open().await;
    b.c.goto(&b.app.url("/docs/")).await.expect("open docs");
    let title = b.c.wait().for_element(Locator::Css(".swagger-ui .info .title")).await.expect("Swagger UI rendered");
    assert!(title.text().await.expect("title").contains("catsdogs"));
    b.close().await;
}
