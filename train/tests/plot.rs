//! `RunLogger::plot` writes a real PNG: decoded here with the `png` crate.

use std::collections::HashSet;
use std::path::PathBuf;

use flint_train::plot::PlotOptions;
use flint_train::RunLogger;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flint-train-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// (width, height, RGB pixels) of the PNG at `path`.
fn decode(path: &std::path::Path) -> (u32, u32, Vec<[u8; 3]>) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let px = buf[..info.buffer_size()]
        .chunks_exact(3)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

fn count(px: &[[u8; 3]], color: [u8; 3]) -> usize {
    px.iter().filter(|&&p| p == color).count()
}

/// A run like the digits example's: train and test loss, test accuracy.
fn logged_run(dir: &std::path::Path) -> RunLogger {
    let mut log = RunLogger::create(dir).unwrap();
    for epoch in 1..=30u64 {
        let train = 2.3 * (-(epoch as f64) / 6.0).exp() + 0.08;
        log.scalar("train/loss", epoch, train).unwrap();
        log.scalar("test/loss", epoch, train * 1.15).unwrap();
        log.scalar(
            "test/accuracy",
            epoch,
            0.98 - 0.7 * (-(epoch as f64) / 4.0).exp(),
        )
        .unwrap();
    }
    log
}

#[test]
fn curves_png_has_the_size_and_the_lines() {
    let dir = temp_dir("curves");
    let log = logged_run(&dir);
    let path = dir.join("curves.png");
    log.plot(&path, &[&["train/loss", "test/loss"], &["test/accuracy"]])
        .unwrap();
    let (w, h, px) = decode(&path);
    // defaults: 900 wide, 320 per panel
    assert_eq!((w, h), (900, 640));
    let distinct: HashSet<[u8; 3]> = px.iter().copied().collect();
    // white, grid greys, three line colours, anti-aliased text and lines
    assert!(distinct.len() > 50, "only {} colours", distinct.len());
    // the first series of each panel is tab10 blue, the second orange
    let blue = count(&px, [31, 119, 180]);
    let orange = count(&px, [255, 127, 14]);
    assert!(blue > 500, "blue pixels: {blue}");
    assert!(orange > 200, "orange pixels: {orange}");
    // mostly white background
    let white = count(&px, [255, 255, 255]);
    assert!(
        white > px.len() / 2,
        "white pixels: {white} of {}",
        px.len()
    );
    // the lower panel (accuracy) holds only blue: no orange below the middle
    let lower_orange = px[px.len() / 2..]
        .iter()
        .filter(|&&p| p == [255, 127, 14])
        .count();
    assert_eq!(lower_orange, 0);
    // dark text pixels (labels, legend, captions), drawn with the bundled font
    let dark = px.iter().filter(|p| p.iter().all(|&c| c < 80)).count();
    assert!(dark > 1000, "dark pixels: {dark}");
    // no temporary file left behind
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    if let Some(keep) = std::env::var_os("FLINT_KEEP_PLOT") {
        // to look at it: FLINT_KEEP_PLOT=/tmp/curves.png cargo test -p flint-train --test plot
        std::fs::copy(&path, keep).unwrap();
    }
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn requested_size_and_title() {
    let dir = temp_dir("sized");
    let log = logged_run(&dir);
    let opts = PlotOptions {
        width: 640,
        panel_height: 200,
        title: Some("digits: 64-128-128-10".into()),
    };
    let path = dir.join("three.png");
    log.plot_with(
        &path,
        &[&["train/loss"], &["test/loss"], &["test/accuracy"]],
        &opts,
    )
    .unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), (640, 3 * 200 + 40));
    assert_eq!((w, h), opts.image_size(3));
    let distinct: HashSet<[u8; 3]> = px.iter().copied().collect();
    assert!(distinct.len() > 20, "only {} colours", distinct.len());
    // the title band is not blank
    let title_dark = px[..(640 * 40) as usize]
        .iter()
        .filter(|p| p.iter().all(|&c| c < 80))
        .count();
    assert!(title_dark > 100, "title pixels: {title_dark}");
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn single_points_and_non_finite_values_still_plot() {
    let dir = temp_dir("edge");
    let mut log = RunLogger::create(&dir).unwrap();
    log.scalar("one", 5, 1.0).unwrap();
    log.scalar("nan", 1, f64::NAN).unwrap();
    log.scalar("flat", 0, 2.0).unwrap();
    log.scalar("flat", 10, 2.0).unwrap();
    let path = dir.join("edge.png");
    log.plot(&path, &[&["one", "nan"], &["flat"]]).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), (900, 640));
    // the single point is drawn as a marker
    assert!(count(&px, [31, 119, 180]) > 10);
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plot_errors_name_the_problem() {
    let dir = temp_dir("errors");
    let log = logged_run(&dir);
    let e = log
        .plot(dir.join("x.png"), &[&["train/loss", "tset/loss"]])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "RunLogger::plot: nothing was logged under \"tset/loss\" \
         (tags: \"train/loss\", \"test/loss\", \"test/accuracy\")"
    );
    let missing = dir.join("no/such/folder/c.png");
    let e = log.plot(&missing, &[&["train/loss"]]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}
