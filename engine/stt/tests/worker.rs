//! The `hearth-stt` binary as the node runs it: a child process speaking the wire protocol.

mod common;

use common::Worker;
use hearth_engine::stt_wire::SttMessage;

#[test]
fn worker_without_model_fails_with_exit_2() {
    let w = Worker::spawn(&["--model", "/nonexistent/whisper-tiny.en"]);
    match w.next(30) {
        SttMessage::Failure { id: 0, message } => {
            assert!(
                message.contains("/nonexistent/whisper-tiny.en"),
                "{message}"
            )
        }
        other => panic!("expected Failure{{id: 0}}, got {other:?}"),
    }
    assert_eq!(w.finish(30), Some(2));
}

#[test]
fn worker_bad_arguments_fail_with_exit_2() {
    let w = Worker::spawn(&["--modle", "x"]);
    assert!(matches!(w.next(30), SttMessage::Failure { id: 0, .. }));
    assert_eq!(w.finish(30), Some(2));
}

#[test]
fn worker_hello_request_result_and_exit_0_on_eof() {
    let test = "worker_hello_request_result_and_exit_0_on_eof";
    let Some(model) = common::model_dir(test) else {
        return;
    };
    let Some(samples) = common::synth(test, "The box was thrown beside the parked truck.") else {
        return;
    };
    let mut w = Worker::spawn(&["--model", model.to_str().unwrap(), "--threads", "1"]);
    match w.next(120) {
        SttMessage::Hello { model } => assert!(model.contains("int8"), "{model}"),
        other => panic!("expected Hello, got {other:?}"),
    }
    // Two requests back to back; answers come in order, with their ids.
    for (id, interim) in [(41, true), (42, false)] {
        w.send(&SttMessage::Request {
            id,
            interim,
            language: "en".into(),
            samples: samples.clone(),
        });
    }
    for want in [41, 42] {
        match w.next(120) {
            SttMessage::Result {
                id,
                decode_us,
                text,
            } => {
                assert_eq!(id, want);
                assert!(decode_us > 0);
                let (errors, words) =
                    common::word_errors("the box was thrown beside the parked truck", &text);
                assert!(errors * 4 <= words, "{text:?}");
            }
            other => panic!("expected a Result, got {other:?}"),
        }
    }
    // An English-only model refuses other languages, per request.
    w.send(&SttMessage::Request {
        id: 43,
        interim: false,
        language: "fr".into(),
        samples: samples[..16_000].to_vec(),
    });
    assert!(matches!(w.next(60), SttMessage::Failure { id: 43, .. }));
    assert_eq!(w.finish(60), Some(0), "exit 0 at the end of stdin");
}

#[test]
fn worker_garbage_on_stdin_exits_3() {
    let Some(model) = common::model_dir("worker_garbage_on_stdin_exits_3") else {
        return;
    };
    let mut w = Worker::spawn(&["--model", model.to_str().unwrap()]);
    assert!(matches!(w.next(120), SttMessage::Hello { .. }));
    // A frame of an unknown type 9.
    w.send_raw(&[1, 0, 0, 0, 9]);
    match w.next(30) {
        SttMessage::Failure { id: 0, message } => {
            assert!(message.contains("malformed"), "{message}")
        }
        other => panic!("expected Failure{{id: 0}}, got {other:?}"),
    }
    assert_eq!(w.finish(30), Some(3));

    // An impossible length prefix.
    let mut w = Worker::spawn(&["--model", model.to_str().unwrap()]);
    assert!(matches!(w.next(120), SttMessage::Hello { .. }));
    w.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    assert!(matches!(w.next(30), SttMessage::Failure { id: 0, .. }));
    assert_eq!(w.finish(30), Some(3));
}
