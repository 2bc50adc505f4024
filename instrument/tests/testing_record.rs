//! Under `awaitscope record`, each test guard also writes a recording of
//! its own next to `AWAITSCOPE_RECORD` (one test in this binary: it sets
//! the environment).

use awaitscope_wire::{Body, FrameReader};

#[tokio::test]
async fn guards_write_numbered_recordings_under_record() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("{pid}.rec");
    std::env::set_var("AWAITSCOPE_RECORD", &pattern);
    for _ in 0..2 {
        let scope = awaitscope::testing::guard();
        awaitscope::spawn_named("recorded", async {
            tokio::task::yield_now().await;
        })
        .await
        .unwrap();
        assert!(scope.finish().failures.is_empty());
    }
    std::env::remove_var("AWAITSCOPE_RECORD");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let pid = std::process::id();
    assert_eq!(
        names,
        [format!("{pid}-test1.rec"), format!("{pid}-test2.rec")]
    );
    for n in names {
        let f = std::fs::File::open(dir.path().join(n)).unwrap();
        let frames: Vec<_> = FrameReader::new(f)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(matches!(frames[0].body, Body::Hello(_)));
        assert!(matches!(frames.last().unwrap().body, Body::Goodbye));
    }
}
