//! Real ComfyUI 0.3.64's message sequences (`tests/fixtures/captured/`), replayed message by
//! message through the tracker, with what a client must see after each message.

use super::*;
use serde_json::Value;

/// One point of a replay: the tracker's `percent`, `node` and `step` after a message.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    percent: f64,
    node: Option<String>,
    step: Option<u64>,
}

fn point(percent: f64, node: Option<&str>, step: Option<u64>) -> Point {
    Point {
        percent,
        node: node.map(str::to_string),
        step,
    }
}

/// A prompt of the capture and every point its tracker went through, one per text frame.
struct Replayed {
    prompt_id: PromptId,
    points: Vec<Point>,
    outcome: Option<Outcome>,
}

impl Replayed {
    /// The points with consecutive repeats folded: what a client polling often would see.
    fn distinct(&self) -> Vec<Point> {
        let mut out: Vec<Point> = Vec::new();
        for p in &self.points {
            if out.last() != Some(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// Replays every text frame socket `socket` received, feeding each to the tracker of every
/// prompt accepted so far (as the gateway does: a tracker ignores other prompts' messages).
fn replay(fixture: &str, socket: &str) -> Vec<Replayed> {
    let mut trackers: Vec<(ProgressTracker, Replayed)> = Vec::new();
    for line in fixture.lines().filter(|l| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).expect("fixture lines are JSON");
        let http = &record["http"];
        if http["method"] == "POST" && http["path"] == "/prompt" && http["status"] == 200 {
            let id = http["response"]["prompt_id"].as_str().expect("a prompt id");
            let graph = &http["request"]["prompt"];
            let prompt_id = PromptId(id.to_string());
            let mut tracker = ProgressTracker::new(prompt_id.clone(), graph);
            // As `Job::dispatched` does with a partial graph's warnings.
            let dropped = crate::comfyui::dropped_outputs(&http["response"]["node_errors"], graph);
            tracker.drop_outputs(dropped.iter().filter_map(|w| w["node"].as_str()));
            trackers.push((
                tracker,
                Replayed {
                    prompt_id,
                    points: Vec::new(),
                    outcome: None,
                },
            ));
            continue;
        }
        if record["socket"] != socket {
            continue;
        }
        let Some(frame) = record["frame"].as_str() else {
            continue;
        };
        let event = WsEvent::from_text(frame);
        for (tracker, replayed) in &mut trackers {
            if let Some(outcome) = tracker.observe(&event) {
                replayed.outcome = Some(outcome.clone());
            }
            let snap = tracker.snapshot("running", 0);
            replayed.points.push(Point {
                percent: tracker.percent(),
                node: snap["node"].as_str().map(str::to_string),
                step: snap["step"].as_u64(),
            });
        }
    }
    trackers.into_iter().map(|(_, r)| r).collect()
}

/// Every replay keeps `percent` from going back, and reaches 100 exactly when it succeeded.
fn check_invariants(replayed: &Replayed) {
    for pair in replayed.points.windows(2) {
        assert!(
            pair[1].percent >= pair[0].percent,
            "{}: percent went back: {:?} -> {:?}",
            replayed.prompt_id,
            pair[0],
            pair[1]
        );
    }
    let last = replayed.points.last().expect("the prompt got messages");
    match replayed.outcome {
        Some(Outcome::Succeeded) => assert_eq!(last.percent, 100.0, "{}", replayed.prompt_id),
        _ => assert!(last.percent < 100.0, "{}: {last:?}", replayed.prompt_id),
    }
}

const FIXTURES: [(&str, &str); 9] = [
    (
        "01",
        include_str!("../../tests/fixtures/captured/01-slow-with-previews.jsonl"),
    ),
    (
        "02",
        include_str!("../../tests/fixtures/captured/02-slow-with-preview-metadata.jsonl"),
    ),
    (
        "03",
        include_str!("../../tests/fixtures/captured/03-two-prompts-back-to-back.jsonl"),
    ),
    (
        "04",
        include_str!("../../tests/fixtures/captured/04-slow-fail-at-2.jsonl"),
    ),
    (
        "05",
        include_str!("../../tests/fixtures/captured/05-interrupt.jsonl"),
    ),
    (
        "06",
        include_str!("../../tests/fixtures/captured/06-delete-from-queue.jsonl"),
    ),
    (
        "07",
        include_str!("../../tests/fixtures/captured/07-prompt-validation-failures.jsonl"),
    ),
    (
        "08",
        include_str!("../../tests/fixtures/captured/08-outputs-of-every-kind.jsonl"),
    ),
    (
        "13",
        include_str!("../../tests/fixtures/captured/13-identical-prompt-resubmitted.jsonl"),
    ),
];

type P = (f64, Option<&'static str>, Option<u64>);

fn points(expected: &[P]) -> Vec<Point> {
    expected
        .iter()
        .map(|&(percent, node, step)| point(percent, node, step))
        .collect()
}

fn scenario(name: &str) -> Vec<Replayed> {
    let (_, fixture) = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a fixture of that name");
    let replayed = replay(fixture, "A");
    for prompt in &replayed {
        check_invariants(prompt);
    }
    replayed
}

/// EmptyImage (1) -> SlowSteps (4 steps) -> SaveImage (1): 6 in all.
const SLOW_4_STEPS: [P; 11] = [
    (0.0, None, None),
    (0.0, Some("1"), None),
    (16.7, Some("1"), None),
    (16.7, Some("2"), None),
    (33.3, Some("2"), Some(1)),
    (50.0, Some("2"), Some(2)),
    (66.7, Some("2"), Some(3)),
    (83.3, Some("2"), Some(4)),
    (83.3, Some("3"), None),
    (100.0, Some("3"), None),
    (100.0, None, None),
];

/// The points of a prompt whose nodes count one step each and run in `order`: each node starts
/// at the percent the ones before it reached and ends one share further.
fn one_step_each(order: &[&str]) -> Vec<Point> {
    let share = |done: usize| (1000.0 * done as f64 / order.len() as f64).round() / 10.0;
    let mut out = vec![point(0.0, None, None)];
    for (done, node) in order.iter().enumerate() {
        out.push(point(share(done), Some(node), None));
        out.push(point(share(done + 1), Some(node), None));
    }
    out.push(point(100.0, None, None));
    out
}

/// EmptyImage -> ImageInvert -> SaveImage, 1 each.
const INVERT: [&str; 3] = ["1", "2", "3"];

#[test]
fn a_running_node_is_counted_by_its_steps_although_progress_state_comes_before_executing() {
    // Before the fix, `executing` after `progress_state` counted the running node as finished:
    // 83.3 % from the first step to the end.
    let run = scenario("01");
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].outcome, Some(Outcome::Succeeded));
    assert_eq!(run[0].distinct(), points(&SLOW_4_STEPS));
}

#[test]
fn previews_with_metadata_and_a_cached_first_node() {
    let run = scenario("02");
    assert_eq!(
        run[0].distinct(),
        points(&[
            (0.0, None, None),
            (16.7, None, None), // node 1 cached: done before anything runs
            (16.7, Some("2"), None),
            (33.3, Some("2"), Some(1)),
            (50.0, Some("2"), Some(2)),
            (66.7, Some("2"), Some(3)),
            (83.3, Some("2"), Some(4)),
            (83.3, Some("3"), None),
            (100.0, Some("3"), None),
            (100.0, None, None),
        ])
    );
}

#[test]
fn back_to_back_prompts_each_follow_only_their_own_messages() {
    let runs = scenario("03");
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|r| r.outcome == Some(Outcome::Succeeded)));
    assert_eq!(runs[0].distinct(), one_step_each(&INVERT));
    assert_eq!(runs[1].distinct(), points(&SLOW_4_STEPS));
    // The second part: slow with 6 steps (8 in all), then invert queued behind it.
    assert_eq!(
        runs[2].distinct(),
        points(&[
            (0.0, None, None),
            (0.0, Some("1"), None),
            (12.5, Some("1"), None),
            (12.5, Some("2"), None),
            (25.0, Some("2"), Some(1)),
            (37.5, Some("2"), Some(2)),
            (50.0, Some("2"), Some(3)),
            (62.5, Some("2"), Some(4)),
            (75.0, Some("2"), Some(5)),
            (87.5, Some("2"), Some(6)),
            (87.5, Some("3"), None),
            (100.0, Some("3"), None),
            (100.0, None, None),
        ])
    );
    assert_eq!(runs[3].distinct(), one_step_each(&INVERT));
    // The waiting prompt saw nothing of the running one: still at 0 when the first ended.
    let first_end = runs[2]
        .points
        .iter()
        .position(|p| p.percent == 100.0)
        .expect("the first prompt ends");
    assert_eq!(runs[3].points[first_end], point(0.0, None, None));
}

#[test]
fn a_failure_keeps_the_progress_it_reached_and_comfyuis_message_without_its_newline() {
    let run = scenario("04");
    assert_eq!(
        run[0].distinct(),
        points(&[
            (0.0, None, None),
            (0.0, Some("1"), None),
            (16.7, Some("1"), None),
            (16.7, Some("2"), None),
            (33.3, Some("2"), Some(1)),
        ])
    );
    let Some(Outcome::Failed(failure)) = &run[0].outcome else {
        panic!("expected a failure, got {:?}", run[0].outcome);
    };
    assert_eq!(failure.node_id.as_deref(), Some("2"));
    assert_eq!(failure.node_type.as_deref(), Some("SlowSteps"));
    assert_eq!(failure.exception_type.as_deref(), Some("RuntimeError"));
    // ComfyUI sends "SlowSteps failed at step 2 as asked\n".
    assert_eq!(
        failure.exception_message,
        "SlowSteps failed at step 2 as asked"
    );
    assert!(!failure.traceback.is_empty());
}

#[test]
fn an_interrupt_ends_the_prompt_where_it_stood() {
    let run = scenario("05");
    // 1 + 20 + 1 = 22: four steps of twenty.
    assert_eq!(
        run[0].distinct().last(),
        Some(&point(22.7, Some("2"), Some(4)))
    );
    assert_eq!(
        run[0].outcome,
        Some(Outcome::Interrupted {
            node_id: Some("2".into()),
            node_type: Some("SlowSteps".into()),
        })
    );
}

#[test]
fn a_prompt_deleted_from_the_queue_never_starts() {
    let runs = scenario("06");
    assert_eq!(runs[0].outcome, Some(Outcome::Succeeded));
    assert_eq!(
        runs[0].distinct().get(11),
        Some(&point(90.0, Some("2"), Some(8)))
    );
    assert_eq!(runs[1].outcome, None);
    assert_eq!(runs[1].distinct(), points(&[(0.0, None, None)]));
}

#[test]
fn partial_graphs_reach_100_by_the_branches_that_run() {
    // Both accepted prompts had one output dropped at validation (node_errors): a bad combo
    // value in SaveAnimatedWEBP, a missing file for LoadImage (and its SaveImage).
    let runs = scenario("07");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].distinct(), one_step_each(&["1", "3"]));
    assert_eq!(runs[1].distinct(), one_step_each(&["1", "2"]));
}

#[test]
fn graphs_with_several_outputs_run_in_comfyuis_order_not_node_id_order() {
    let runs = scenario("08");
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[0].distinct(), one_step_each(&INVERT)); // video: 3 nodes in a row
    for anim_or_audio in &runs[2..] {
        assert_eq!(anim_or_audio.distinct(), one_step_each(&["1", "3", "2"]));
    }
}

#[test]
fn a_fully_cached_prompt_goes_from_0_to_100_at_once() {
    let runs = scenario("13");
    assert_eq!(runs[0].distinct().len(), 10);
    assert_eq!(runs[1].outcome, Some(Outcome::Succeeded));
    assert_eq!(
        runs[1].distinct(),
        points(&[(0.0, None, None), (100.0, None, None)])
    );
}

#[test]
fn the_old_order_executing_before_progress_state_still_counts_right() {
    // What older ComfyUI versions (and the simulator before it followed the captures) send:
    // `executing` first, then `progress_state`, and `progress` before its `progress_state`.
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "2": {"class_type": "SlowSteps", "inputs": {"image": ["1", 0], "steps": 4}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
    });
    let p = PromptId("p".into());
    let mut t = ProgressTracker::new(p.clone(), &graph);
    let state = |nodes: Value| {
        WsEvent::from_message("progress_state", json!({"prompt_id": "p", "nodes": nodes}))
    };
    let entry = |v: u64, m: u64, s: &str| json!({"value": v, "max": m, "state": s});
    let start = || WsEvent::ExecutionStart {
        prompt_id: p.clone(),
    };
    let executing = |node: &str| WsEvent::Executing {
        prompt_id: Some(p.clone()),
        node: Some(node.into()),
    };
    let progress = |node: &str, value: u64, max: u64| WsEvent::Progress {
        prompt_id: Some(p.clone()),
        node: Some(node.into()),
        value,
        max,
    };
    t.observe(&start());
    t.observe(&executing("1"));
    t.observe(&state(json!({"1": entry(0, 1, "running")})));
    t.observe(&state(json!({"1": entry(1, 1, "finished")})));
    assert_eq!(t.percent(), 16.7);
    t.observe(&executing("2"));
    t.observe(&state(
        json!({"1": entry(1, 1, "finished"), "2": entry(0, 1, "running")}),
    ));
    assert_eq!(t.percent(), 16.7);
    t.observe(&progress("2", 2, 4));
    t.observe(&state(
        json!({"1": entry(1, 1, "finished"), "2": entry(2, 4, "running")}),
    ));
    assert_eq!(t.percent(), 50.0);
    let snap = t.snapshot("running", 0);
    assert_eq!(
        (
            snap["node"].clone(),
            snap["step"].clone(),
            snap["steps"].clone()
        ),
        (json!("2"), json!(2), json!(4))
    );

    // And a ComfyUI that sends no `progress_state` at all: a node is done when the next starts.
    let mut t = ProgressTracker::new(p.clone(), &graph);
    t.observe(&start());
    t.observe(&executing("1"));
    t.observe(&executing("2"));
    t.observe(&progress("2", 1, 4));
    assert_eq!(t.percent(), 33.3);
    t.observe(&executing("3"));
    assert_eq!(t.percent(), 83.3);
}
