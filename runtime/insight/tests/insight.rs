//! Process maps and reports from hand-built histories: counts, shares, durations, waiting,
//! retries, loops, variants and bottlenecks; and the BPMN and SVG drawn from them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_core::codec::Payload;
use cairn_core::event::{EventKind, EventRecord};
use cairn_core::journal::StoredEvent;
use cairn_core::task::{Actor, Candidates, TaskChange, TaskSpec};
use cairn_insight::report::Report;
use cairn_insight::{bpmn, svg, Layout, NodeKind, ProcessMap, Shape};

fn payload() -> Payload {
    Payload {
        codec: 0,
        data: b"null".to_vec(),
    }
}

/// A history from (time in seconds, event) pairs.
fn history(id: &str, kinds: Vec<(u64, EventKind)>) -> Vec<StoredEvent> {
    let mut events = vec![StoredEvent {
        lsn: 0,
        hash: [0; 32],
        record: EventRecord {
            instance: 1,
            seq: 0,
            prev_lsn: None,
            prev_hash: [0; 32],
            recorded_at_ms: 0,
            kind: EventKind::WorkflowStarted {
                workflow_type: "claim".into(),
                id: id.into(),
                input: payload(),
            },
            actor: None,
        },
    }];
    for (seq, (at, kind)) in kinds.into_iter().enumerate() {
        events.push(StoredEvent {
            lsn: seq as u64 + 1,
            hash: [0; 32],
            record: EventRecord {
                instance: 1,
                seq: seq as u64 + 1,
                prev_lsn: None,
                prev_hash: [0; 32],
                recorded_at_ms: at * 1000,
                kind,
                actor: None,
            },
        });
    }
    events
}

fn done(step: u32, activity: &str) -> EventKind {
    EventKind::ActivityCompleted {
        step,
        activity: activity.into(),
        input: payload(),
        attempt: 1,
        output: payload(),
    }
}

fn task(step: u32) -> EventKind {
    EventKind::TaskCreated {
        step,
        task: Box::new(TaskSpec {
            name: "approve".into(),
            title: "Approve a claim".into(),
            description: String::new(),
            input: payload(),
            decision_schema: "{}".into(),
            candidates: Candidates {
                users: vec![],
                roles: vec!["approver".into()],
            },
            assignee: None,
            priority: 0,
            due_at_ms: None,
            follow_up_at_ms: None,
            escalation: vec![],
        }),
    }
}

fn claimed(step: u32) -> EventKind {
    EventKind::TaskChanged {
        step,
        actor: Actor::new("april", ["approver"]),
        change: TaskChange::Claimed,
    }
}

fn decided(step: u32) -> EventKind {
    EventKind::TaskCompleted {
        step,
        actor: Actor::new("april", ["approver"]),
        decision: payload(),
        escalation: None,
    }
}

fn completed() -> EventKind {
    EventKind::WorkflowCompleted { output: payload() }
}

/// Three approved claims (check, approve, book), one declined (check, approve, end
/// failed), and one still waiting for a person.
fn claims() -> Vec<Vec<StoredEvent>> {
    let mut all = Vec::new();
    for wait in [60u64, 120, 3600] {
        all.push(history(
            &format!("ok-{}", wait),
            vec![
                (1, done(0, "check")),
                (1, task(1)),
                (1 + wait, claimed(1)),
                (2 + wait, decided(1)),
                (
                    3 + wait,
                    EventKind::ActivityAttemptFailed {
                        step: 2,
                        activity: "book".into(),
                        attempt: 1,
                        error: cairn_core::event::ActivityErrorRecord {
                            kind: "error".into(),
                            message: "busy".into(),
                            retryable: true,
                        },
                        retry_in_ms: 1000,
                    },
                ),
                (5 + wait, done(2, "book")),
                (5 + wait, completed()),
            ],
        ));
    }
    all.push(history(
        "declined",
        vec![
            (2, done(0, "check")),
            (2, task(1)),
            (30, claimed(1)),
            (40, decided(1)),
            (40, EventKind::WorkflowFailed { error: payload() }),
        ],
    ));
    all.push(history(
        "waiting",
        vec![(1, done(0, "check")), (1, task(1))],
    ));
    all
}

fn node(map: &ProcessMap, kind: NodeKind, name: &str) -> usize {
    map.nodes
        .iter()
        .position(|n| n.kind == kind && n.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} {name}: {:#?}", map.nodes))
}

#[test]
fn counts_shares_durations_and_waiting_are_mined() {
    let histories = claims();
    let map = ProcessMap::mine("claim", histories.iter().map(Vec::as_slice));
    assert_eq!((map.runs, map.finished), (5, 4));
    let check = node(&map, NodeKind::Activity, "check");
    let approve = node(&map, NodeKind::Task, "approve");
    let book = node(&map, NodeKind::Activity, "book");
    let ok = node(&map, NodeKind::Completed, "completed");
    let failed = node(&map, NodeKind::Failed, "failed");
    assert_eq!(map.nodes[0].kind, NodeKind::Start);
    assert_eq!(map.nodes[check].count, 5);
    assert_eq!(map.nodes[approve].count, 5);
    assert_eq!(map.nodes[approve].open, 1);
    // Waiting for a person: created to claimed, 60 s, 120 s, 3600 s, 28 s.
    let waiting = map.nodes[approve].waiting.unwrap();
    assert_eq!(waiting.samples, 4);
    assert_eq!(waiting.median_ms, 60_000);
    assert_eq!(waiting.p95_ms, 3_600_000);
    // The booking: asked for at the decision, one retry, done 3 s later.
    let booking = map.nodes[book].duration.unwrap();
    assert_eq!(
        (booking.samples, booking.median_ms),
        (3, 3_000),
        "{booking:?}"
    );
    assert_eq!(map.nodes[book].failed_attempts, 3);
    // Ends come last.
    assert!(ok > book && failed > book);

    let edge = |from: usize, to: usize| {
        map.edges
            .iter()
            .find(|e| e.from == from && e.to == to)
            .unwrap_or_else(|| panic!("no edge {from}->{to}: {:#?}", map.edges))
    };
    assert_eq!(edge(approve, book).count, 3);
    assert!((edge(approve, book).share - 0.75).abs() < 1e-9);
    assert_eq!(edge(approve, failed).count, 1);
    assert_eq!(edge(book, ok).count, 3);
    // The slowest hand-over is waiting for the decision.
    let slow = edge(check, approve);
    assert!(slow.bottleneck, "{:#?}", map.edges);
    assert!(!edge(book, ok).bottleneck);

    // Paths of finished runs only: 3 approved, 1 declined.
    assert_eq!(map.distinct_variants, 2);
    assert_eq!(map.variants[0].count, 3);
    assert!((map.variants[0].share - 0.75).abs() < 1e-9);
    assert_eq!(map.variants[0].path, vec![0, check, approve, book, ok]);
}

#[test]
fn a_polling_loop_folds_into_one_loop_and_other_types_are_skipped() {
    let mut kinds = Vec::new();
    let mut step = 0;
    for round in 0..4u64 {
        kinds.push((round * 60, done(step, "poll")));
        kinds.push((
            round * 60,
            EventKind::TimerStarted {
                step: step + 1,
                fire_at_ms: (round + 1) * 60_000,
            },
        ));
        kinds.push(((round + 1) * 60, EventKind::TimerFired { step: step + 1 }));
        step += 2;
    }
    kinds.push((300, done(step, "poll")));
    kinds.push((300, completed()));
    let polling = history("p-1", kinds);
    let mut other = history("x", vec![(1, completed())]);
    if let EventKind::WorkflowStarted { workflow_type, .. } = &mut other[0].record.kind {
        *workflow_type = "other".into();
    }
    let map = ProcessMap::mine("claim", [polling.as_slice(), other.as_slice()]);
    assert_eq!(map.runs, 1);
    // start, poll, the wait after poll, completed: a loop, not a chain of 9 nodes.
    assert_eq!(map.nodes.len(), 4, "{:#?}", map.nodes);
    let poll = node(&map, NodeKind::Activity, "poll");
    let wait = node(&map, NodeKind::Timer, "wait after poll");
    assert_eq!(map.nodes[poll].count, 5);
    assert_eq!(map.nodes[wait].count, 4);
    assert_eq!(map.nodes[wait].duration.unwrap().median_ms, 60_000);
    let back = map
        .edges
        .iter()
        .find(|e| e.from == wait && e.to == poll)
        .unwrap();
    assert_eq!(back.count, 4);

    // The layout breaks the loop: one arrow runs back, everything else forwards.
    let layout = Layout::of(&map);
    let backs: Vec<_> = layout.routes.iter().filter(|r| r.back).collect();
    assert_eq!(backs.len(), 1, "{:#?}", layout.routes);
    for route in layout.routes.iter().filter(|r| !r.back) {
        assert!(
            layout.shapes[route.from].column < layout.shapes[route.to].column,
            "{route:?}"
        );
    }
}

#[test]
fn the_bpmn_has_gateways_where_paths_split_and_join_and_a_shape_per_element() {
    let histories = claims();
    let map = ProcessMap::mine("claim", histories.iter().map(Vec::as_slice));
    let layout = Layout::of(&map);
    let approve = node(&map, NodeKind::Task, "approve");
    // The decision splits (book or fail); nothing joins in this map.
    assert!(layout
        .shapes
        .iter()
        .any(|s| s.shape == Shape::Split(approve)));
    let xml = bpmn::to_xml(&map);
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    assert!(
        xml.contains("<bpmn:userTask id=\"node2\" name=\"Task: approve\">"),
        "{xml}"
    );
    assert!(xml.contains("<bpmn:serviceTask"));
    assert!(xml.contains("gatewayDirection=\"Diverging\""));
    assert!(xml.contains("<bpmn:errorEventDefinition"));
    assert!(xml.contains("name=\"3 · 75%"), "{xml}");
    assert!(
        xml.contains("name=\"5 · 100% · 1 min\""),
        "the bottleneck shows its median: {xml}"
    );
    // Every flow element has exactly one diagram shape or edge.
    for element in ["node0", "node1", "node2", "node3", "split_node2", "flow0"] {
        assert_eq!(
            xml.matches(&format!("bpmnElement=\"{element}\"")).count(),
            1,
            "{element}"
        );
    }
    let flows = xml.matches("<bpmn:sequenceFlow").count();
    assert_eq!(flows, xml.matches("<bpmndi:BPMNEdge").count());
    assert_eq!(flows, layout.routes.len());

    let drawing = svg::to_svg(&map);
    assert!(drawing.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(drawing.contains(">approve<"));
    assert!(drawing.contains("#dc2626"), "a bottleneck is drawn in red");
    assert!(!drawing.contains("style="), "presentation attributes only");
}

#[test]
fn names_are_escaped_in_xml_and_svg() {
    let mut run = history("x", vec![(1, done(0, "a<b & \"c\"")), (2, completed())]);
    if let EventKind::WorkflowStarted { workflow_type, .. } = &mut run[0].record.kind {
        *workflow_type = "odd type/é".into();
    }
    let map = ProcessMap::mine("odd type/é", [run.as_slice()]);
    let xml = bpmn::to_xml(&map);
    assert!(xml.contains("name=\"a&lt;b &amp; &quot;c&quot;\""), "{xml}");
    assert!(xml.contains("id=\"Process_odd_type__\""), "{xml}");
    let drawing = svg::to_svg(&map);
    assert!(drawing.contains("a&lt;b &amp;"));
    assert!(!drawing.contains("a<b"));
}

#[test]
fn a_report_counts_ends_durations_service_levels_and_failure_reasons_per_period() {
    let hour = 3_600_000;
    // Starts at 0 s, 1 s, 2 s, ... (all in the first hour) from `claims()`, plus two runs
    // in the second hour: one failed by an activity, one that escalated and went overdue.
    let mut histories = claims();
    let shift = |mut run: Vec<StoredEvent>| {
        for e in &mut run {
            e.record.recorded_at_ms += hour;
        }
        run
    };
    histories.push(shift(history(
        "broke",
        vec![
            (
                5,
                EventKind::ActivityFailed {
                    step: 0,
                    activity: "check".into(),
                    input: payload(),
                    attempt: 3,
                    error: cairn_core::event::ActivityErrorRecord {
                        kind: "timeout".into(),
                        message: "the registry did not answer".into(),
                        retryable: true,
                    },
                },
            ),
            (
                5,
                EventKind::WorkflowFailed {
                    error: Payload {
                        codec: 0,
                        data: br#"{"Activity":{"activity":"check","message":"x"}}"#.to_vec(),
                    },
                },
            ),
        ],
    )));
    histories.push(shift(history(
        "late",
        vec![
            (1, task(0)),
            (
                60,
                EventKind::TaskChanged {
                    step: 0,
                    actor: Actor::new("cairn", Vec::<String>::new()),
                    change: TaskChange::Overdue,
                },
            ),
            (
                90,
                EventKind::TaskChanged {
                    step: 0,
                    actor: Actor::new("cairn", Vec::<String>::new()),
                    change: TaskChange::Escalated {
                        tier: 1,
                        reassigned: None,
                    },
                },
            ),
        ],
    )));
    let report = Report::build(
        "claim",
        0,
        2 * hour,
        hour,
        histories.iter().map(Vec::as_slice),
    );
    assert_eq!(report.buckets.len(), 2);
    let (first, second) = (&report.buckets[0], &report.buckets[1]);
    assert_eq!(
        (first.started, first.completed, first.failed, first.open),
        (5, 3, 1, 1)
    );
    assert_eq!(first.retries, 3);
    assert_eq!(first.tasks, 5);
    // Start to end of the four finished: 65 s, 125 s, 3605 s, 40 s.
    let took = first.duration.unwrap();
    assert_eq!(
        (took.samples, took.median_ms, took.p95_ms),
        (4, 65_000, 3_605_000)
    );
    assert_eq!((second.started, second.failed, second.open), (2, 1, 1));
    assert_eq!((second.overdue_tasks, second.escalations), (1, 1));
    assert_eq!(report.totals.started, 7);
    // The declined claim names its own error; the broken one the activity that failed.
    let reasons: Vec<(&str, u64)> = report
        .failure_reasons
        .iter()
        .map(|r| (r.reason.as_str(), r.count))
        .collect();
    assert!(
        reasons.contains(&("activity check: timeout", 1)),
        "{reasons:?}"
    );
    assert!(reasons.contains(&("null", 1)), "{reasons:?}");

    let csv = report.buckets_csv();
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("period_start_utc,started,completed,failed"));
    assert_eq!(
        lines.next().unwrap(),
        "1970-01-01T00:00:00Z,5,3,1,0,0,1,65.000,3605.000,5,0,0,3"
    );
    assert!(lines
        .next()
        .unwrap()
        .starts_with("1970-01-01T01:00:00Z,2,0,1,"));
    let failures = report.reasons_csv();
    assert!(
        failures.contains("activity check: timeout,1,broke"),
        "{failures}"
    );
}

#[test]
fn a_report_has_at_most_its_bucket_limit_and_skips_runs_outside_the_period() {
    let histories = claims();
    let report = Report::build(
        "claim",
        10_000,
        10_000 + 5_000_000,
        1,
        histories.iter().map(Vec::as_slice),
    );
    assert!(report.buckets.len() as u64 <= cairn_insight::report::BUCKETS_MAX);
    // Every claim started at 0 ms, before the period.
    assert_eq!(report.totals.started, 0);
}

#[test]
fn what_a_run_waits_on_is_read_from_its_open_steps() {
    use cairn_insight::waits::waits;
    let due_task = |step: u32, due: u64| {
        let mut created = task(step);
        if let EventKind::TaskCreated { task, .. } = &mut created {
            task.due_at_ms = Some(due);
        }
        created
    };
    // A task due at 100 s, a timer, a retry, a child and a deadline wait, all open.
    let open = history(
        "open",
        vec![
            (1, due_task(1, 100_000)),
            (
                1,
                EventKind::TimerStarted {
                    step: 2,
                    fire_at_ms: 500_000,
                },
            ),
            (
                2,
                EventKind::ActivityAttemptFailed {
                    step: 3,
                    activity: "charge".into(),
                    attempt: 1,
                    error: cairn_core::event::ActivityErrorRecord {
                        kind: "error".into(),
                        message: "busy".into(),
                        retryable: true,
                    },
                    retry_in_ms: 1000,
                },
            ),
            (
                2,
                EventKind::ChildStarted {
                    step: 4,
                    workflow_type: "shipment".into(),
                    child_id: "c-1".into(),
                    input: payload(),
                },
            ),
            (
                2,
                EventKind::SignalWaitStarted {
                    step: 5,
                    name: "approved".into(),
                    deadline_ms: 900_000,
                },
            ),
        ],
    );
    let early = waits(&open, 50_000);
    assert!(early.person && !early.overdue);
    assert!(early.timer && early.retrying && early.child && early.signal);
    assert!(waits(&open, 100_000).overdue, "due at 100 s");

    // Each closes with its outcome; a cancelled step closes too.
    let mut closed = open.clone();
    for (at, kind) in [
        (3, decided(1)),
        (4, EventKind::TimerFired { step: 2 }),
        (5, done(3, "charge")),
        (
            6,
            EventKind::StepCancelled {
                step: 4,
                step_kind: "child".into(),
                name: "shipment".into(),
                reason: "no longer needed".into(),
            },
        ),
        (
            7,
            EventKind::SignalWaitTimedOut {
                step: 5,
                name: "approved".into(),
            },
        ),
    ] {
        let mut next = closed.last().unwrap().clone();
        next.record.seq += 1;
        next.record.recorded_at_ms = at * 1000;
        next.record.kind = kind;
        closed.push(next);
    }
    assert!(
        waits(&closed, 200_000).none(),
        "{:?}",
        waits(&closed, 200_000)
    );

    // A finished run waits for nothing, whatever it left open.
    let mut finished = open.clone();
    let mut end = finished.last().unwrap().clone();
    end.record.kind = completed();
    finished.push(end);
    assert!(waits(&finished, 200_000).none());
}

/// Tickets: triage, one of three support tiers, sometimes a vendor, verify, sometimes
/// reopened (back to triage), sometimes a customer notice, close; some fail.
fn tickets() -> Vec<Vec<StoredEvent>> {
    (0..200u64)
        .map(|n| {
            let mut path: Vec<&str> = vec![
                "triage",
                ["l1_fix", "l2_fix", "l3_fix"][(n % 7 % 3) as usize],
            ];
            if n % 5 == 0 {
                path.push("escalate_vendor");
            }
            path.push("verify");
            if n % 6 == 0 {
                path.extend(["reopen", "triage", "l2_fix", "verify"]);
            }
            if n % 4 == 0 {
                path.push("notify_customer");
            }
            path.push("close");
            let mut kinds: Vec<(u64, EventKind)> = path
                .iter()
                .enumerate()
                .map(|(i, name)| (1 + i as u64 * (1 + n % 17), done(i as u32 + 1, name)))
                .collect();
            let end = if n % 9 == 0 {
                EventKind::WorkflowFailed { error: payload() }
            } else {
                completed()
            };
            kinds.push((1 + path.len() as u64 * (1 + n % 17), end));
            history(&format!("ticket-{n}"), kinds)
        })
        .collect()
}

#[test]
fn no_arrow_of_a_branching_looping_map_runs_through_a_shape() {
    let histories = tickets();
    let map = ProcessMap::mine("claim", histories.iter().map(Vec::as_slice));
    let layout = Layout::of(&map);
    assert!(
        layout.routes.iter().any(|r| r.back),
        "the reopen loop runs back"
    );
    // Strictly inside a shape's box (touching its border is how arrows end).
    let crosses = |(x1, y1): (f64, f64), (x2, y2): (f64, f64), s: &cairn_insight::Placed| {
        let (left, right, top, bottom) = (s.x + 0.5, s.x + s.w - 0.5, s.y + 0.5, s.y + s.h - 0.5);
        if (x1 - x2).abs() < 1e-9 {
            x1 > left && x1 < right && y1.max(y2) > top && y1.min(y2) < bottom
        } else {
            y1 > top && y1 < bottom && x1.max(x2) > left && x1.min(x2) < right
        }
    };
    for route in &layout.routes {
        for pair in route.points.windows(2) {
            for (i, shape) in layout.shapes.iter().enumerate() {
                if i == route.from || i == route.to {
                    continue;
                }
                assert!(
                    !crosses(pair[0], pair[1], shape),
                    "{:?} -> {:?} crosses {:?}: {route:?}",
                    layout.shapes[route.from].shape,
                    layout.shapes[route.to].shape,
                    shape.shape
                );
            }
        }
    }
    // Every segment is horizontal or vertical.
    for route in &layout.routes {
        for pair in route.points.windows(2) {
            let ((x1, y1), (x2, y2)) = (pair[0], pair[1]);
            assert!(
                (x1 - x2).abs() < 1e-9 || (y1 - y2).abs() < 1e-9,
                "{route:?}"
            );
        }
    }
}
