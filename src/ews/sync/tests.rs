use std::time::Duration;

use chrono::TimeZone;

use super::*;
use crate::ews::Ns;
use crate::ews::outcome::{ErrorClass, ResponseCode};
use crate::ews::tree::parse;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ews/client/",
            $name
        ))
        .as_slice()
    };
}

const ROOM: &str = "room-2@rooms.example";

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().unwrap()
}

fn shape(node: &Node) -> Vec<(Ns, &str)> {
    node.children
        .iter()
        .map(|c| (c.ns, c.local.as_str()))
        .collect()
}

fn fixture_text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The operation element of a written request, checked to be the only child of the body
/// and to impersonate [`ROOM`].
fn operation(xml: &[u8], local: &str) -> Node {
    let root = parse(xml).unwrap();
    assert_eq!(
        root.find("SmtpAddress").map(|n| n.text.as_str()),
        Some(ROOM)
    );
    let body = root.child("Body").unwrap();
    assert_eq!(shape(body), [(Ns::Messages, local)]);
    body.children[0].clone()
}

fn assert_calendar_folder(wrapper: &Node) {
    assert_eq!(wrapper.ns, Ns::Messages);
    assert_eq!(shape(wrapper), [(Ns::Types, "DistinguishedFolderId")]);
    assert_eq!(wrapper.children[0].attr("Id"), Some("calendar"));
}

/// The `FieldURI` values of an `ItemShape`, checked to be `IdOnly` plus additional
/// properties in the types namespace.
fn requested_fields(shape_node: &Node) -> Vec<String> {
    assert_eq!(shape_node.ns, Ns::Messages);
    assert_eq!(
        shape(shape_node),
        [
            (Ns::Types, "BaseShape"),
            (Ns::Types, "AdditionalProperties")
        ]
    );
    assert_eq!(shape_node.children[0].text, "IdOnly");
    shape_node.children[1]
        .children
        .iter()
        .map(|f| {
            assert_eq!((f.ns, f.local.as_str()), (Ns::Types, "FieldURI"));
            f.attr("FieldURI").unwrap().to_owned()
        })
        .collect()
}

// ---- requests -------------------------------------------------------------------------------

#[test]
fn a_sync_folder_items_request_follows_the_schema_order_in_the_messages_namespace() {
    let req = SyncFolderItems {
        room: ROOM,
        sync_state: Some("H4sIAAAAAAAEAGZpeHR1cmU+/w=="),
        max_changes: 100,
    };
    let op = operation(
        &req.to_xml(ServerVersion::Exchange2013Sp1).unwrap(),
        "SyncFolderItems",
    );
    assert_eq!(
        shape(&op),
        [
            (Ns::Messages, "ItemShape"),
            (Ns::Messages, "SyncFolderId"),
            (Ns::Messages, "SyncState"),
            (Ns::Messages, "MaxChangesReturned"),
        ]
    );
    let item_shape = op.child("ItemShape").unwrap();
    assert_eq!(
        requested_fields(item_shape),
        ["calendar:UID", "calendar:CalendarItemType"]
    );
    assert_calendar_folder(op.child("SyncFolderId").unwrap());
    assert_eq!(
        op.child("SyncState").unwrap().text,
        "H4sIAAAAAAAEAGZpeHR1cmU+/w=="
    );
    assert_eq!(op.child("MaxChangesReturned").unwrap().text, "100");
}

#[test]
fn a_first_sync_sends_no_sync_state() {
    let req = SyncFolderItems {
        room: ROOM,
        sync_state: None,
        max_changes: MAX_SYNC_CHANGES,
    };
    let op = operation(
        &req.to_xml(ServerVersion::default()).unwrap(),
        "SyncFolderItems",
    );
    assert_eq!(
        shape(&op),
        [
            (Ns::Messages, "ItemShape"),
            (Ns::Messages, "SyncFolderId"),
            (Ns::Messages, "MaxChangesReturned"),
        ]
    );
    assert_eq!(op.child("MaxChangesReturned").unwrap().text, "512");
}

#[test]
fn max_changes_outside_one_to_512_or_an_empty_sync_state_is_refused() {
    for max_changes in [0, 513] {
        let req = SyncFolderItems {
            room: ROOM,
            sync_state: None,
            max_changes,
        };
        assert!(matches!(
            req.to_xml(ServerVersion::default()),
            Err(RequestError::OutOfRange { what: "m:MaxChangesReturned", value, min: 1, max: 512 })
                if value == u64::from(max_changes)
        ));
    }
    let req = SyncFolderItems {
        room: ROOM,
        sync_state: Some(""),
        max_changes: 1,
    };
    assert!(matches!(
        req.to_xml(ServerVersion::default()),
        Err(RequestError::Empty {
            what: "m:SyncState"
        })
    ));
}

#[test]
fn a_get_item_request_asks_for_the_calendar_fields_of_each_id_in_order() {
    let ids = ["AAMk-one", "AAMk-two+/=", "AAMk-three"];
    let req = GetCalendarItems {
        room: ROOM,
        item_ids: &ids,
    };
    let op = operation(&req.to_xml(ServerVersion::default()).unwrap(), "GetItem");
    assert_eq!(
        shape(&op),
        [(Ns::Messages, "ItemShape"), (Ns::Messages, "ItemIds")]
    );
    assert_eq!(
        requested_fields(op.child("ItemShape").unwrap()),
        [
            "item:Subject",
            "item:ParentFolderId",
            "item:LastModifiedTime",
            "calendar:UID",
            "calendar:Start",
            "calendar:End",
            "calendar:IsAllDayEvent",
            "calendar:IsCancelled",
            "calendar:CalendarItemType",
            "calendar:Organizer",
            "calendar:Location",
            "calendar:IsRecurring",
            "calendar:RecurrenceId",
            "calendar:OriginalStart",
            "calendar:AppointmentSequenceNumber",
        ]
    );
    let item_ids = op.child("ItemIds").unwrap();
    let sent: Vec<(Ns, &str, Option<&str>, Option<&str>)> = item_ids
        .children
        .iter()
        .map(|i| (i.ns, i.local.as_str(), i.attr("Id"), i.attr("ChangeKey")))
        .collect();
    assert_eq!(
        sent,
        [
            (Ns::Types, "ItemId", Some("AAMk-one"), None),
            (Ns::Types, "ItemId", Some("AAMk-two+/="), None),
            (Ns::Types, "ItemId", Some("AAMk-three"), None),
        ]
    );
}

#[test]
fn a_get_item_request_needs_ids_and_no_empty_one() {
    let none = GetCalendarItems {
        room: ROOM,
        item_ids: &[],
    };
    assert!(matches!(
        none.to_xml(ServerVersion::default()),
        Err(RequestError::Empty { what: "m:ItemIds" })
    ));
    let blank = GetCalendarItems {
        room: ROOM,
        item_ids: &["AAMk-one", ""],
    };
    assert!(matches!(
        blank.to_xml(ServerVersion::default()),
        Err(RequestError::Empty { what: "Id" })
    ));
}

#[test]
fn a_find_item_request_has_a_shallow_calendar_view_on_the_calendar_folder() {
    let req = FindCalendarView {
        room: ROOM,
        start: utc(2025, 4, 7, 0, 0, 0),
        end: utc(2025, 5, 7, 0, 0, 0),
        max_entries: Some(50),
    };
    let op = operation(&req.to_xml(ServerVersion::default()).unwrap(), "FindItem");
    assert_eq!(op.attr("Traversal"), Some("Shallow"));
    assert_eq!(
        shape(&op),
        [
            (Ns::Messages, "ItemShape"),
            (Ns::Messages, "CalendarView"),
            (Ns::Messages, "ParentFolderIds"),
        ]
    );
    assert_eq!(requested_fields(op.child("ItemShape").unwrap()).len(), 15);
    let view = op.child("CalendarView").unwrap();
    assert!(view.children.is_empty());
    assert_eq!(view.attr("StartDate"), Some("2025-04-07T00:00:00Z"));
    assert_eq!(view.attr("EndDate"), Some("2025-05-07T00:00:00Z"));
    assert_eq!(view.attr("MaxEntriesReturned"), Some("50"));
    assert_calendar_folder(op.child("ParentFolderIds").unwrap());

    let unbounded = FindCalendarView {
        max_entries: None,
        ..req
    };
    let op = operation(
        &unbounded.to_xml(ServerVersion::default()).unwrap(),
        "FindItem",
    );
    assert_eq!(
        op.child("CalendarView").unwrap().attr("MaxEntriesReturned"),
        None
    );
}

#[test]
fn a_find_item_window_ending_before_it_starts_or_asking_for_no_entries_is_refused() {
    let start = utc(2025, 4, 7, 0, 0, 0);
    let backwards = FindCalendarView {
        room: ROOM,
        start,
        end: utc(2025, 4, 6, 23, 59, 59),
        max_entries: None,
    };
    assert!(matches!(
        backwards.to_xml(ServerVersion::default()),
        Err(RequestError::EndBeforeStart)
    ));
    let empty_window = FindCalendarView {
        end: start,
        ..backwards
    };
    assert!(empty_window.to_xml(ServerVersion::default()).is_ok());
    let zero = FindCalendarView {
        max_entries: Some(0),
        ..empty_window
    };
    assert!(matches!(
        zero.to_xml(ServerVersion::default()),
        Err(RequestError::OutOfRange {
            what: "MaxEntriesReturned",
            value: 0,
            ..
        })
    ));
}

#[test]
fn the_calendar_view_limit_stays_inside_two_years() {
    assert_eq!(MAX_CALENDAR_VIEW.num_days(), 730);
}

// ---- SyncFolderItems responses --------------------------------------------------------------

fn change(kind: ChangeKind, id: &str, change_key: Option<&str>) -> ItemChange {
    ItemChange {
        kind,
        item: ItemRef {
            id: id.to_owned(),
            change_key: change_key.map(str::to_owned),
        },
        uid: None,
        item_type: None,
    }
}

#[test]
fn a_sync_folder_items_response_lists_creates_updates_and_deletes_in_order() {
    let changes =
        parse_sync_folder_items_response(fixture!("syncfolderitems-response-changes.xml"))
            .unwrap()
            .unwrap();
    assert_eq!(
        changes,
        SyncChanges {
            sync_state: "H4sIAAAAAAAEAGZpeHR1cmUtcm9vbS0xLXN5bmMtMDAwNy8rPQ==".to_owned(),
            includes_last_item_in_range: false,
            changes: vec![
                ItemChange {
                    uid: Some("040000008200E00074C5B7101A82E0080000000071F4A8D2".to_owned()),
                    item_type: Some(CalendarItemType::RecurringMaster),
                    ..change(
                        ChangeKind::Create,
                        "AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDAx",
                        Some("DwAAABYAAABjay0wMDAxLWE="),
                    )
                },
                change(
                    ChangeKind::Update,
                    "AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDAy",
                    Some("DwAAABYAAABjay0wMDAyLWM=")
                ),
                change(
                    ChangeKind::Delete,
                    "AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDAz",
                    Some("DwAAABYAAABjay0wMDAzLWI=")
                ),
                change(
                    ChangeKind::ReadFlagChange,
                    "AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDA0",
                    Some("DwAAABYAAABjay0wMDA0LWE=")
                ),
                change(
                    ChangeKind::Delete,
                    "AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDA1",
                    None
                ),
            ],
        }
    );
}

#[test]
fn a_sync_with_nothing_new_has_no_changes_and_includes_the_last_item() {
    let body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages><m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>c3RhdGU=</m:SyncState><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange><m:Changes/></m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>"#;
    assert_eq!(
        parse_sync_folder_items_response(body).unwrap(),
        Ok(SyncChanges {
            sync_state: "c3RhdGU=".to_owned(),
            includes_last_item_in_range: true,
            changes: Vec::new(),
        })
    );
}

#[test]
fn an_internal_error_wrapping_busy_comes_back_as_the_sync_error_message() {
    let e =
        parse_sync_folder_items_response(fixture!("syncfolderitems-internal-error-inner-busy.xml"))
            .unwrap()
            .unwrap_err();
    assert_eq!(e.code, ResponseCode::ErrorInternalServerError);
    assert_eq!(e.inner_code, Some(ResponseCode::ErrorServerBusy));
    assert_eq!(e.back_off, Some(Duration::from_secs(5)));
    assert!(e.is_busy());
}

#[test]
fn an_invalid_sync_state_is_an_error_message() {
    let body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages><m:SyncFolderItemsResponseMessage ResponseClass="Error"><m:MessageText>The sync state is not valid for this folder.</m:MessageText><m:ResponseCode>ErrorInvalidSyncStateData</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>"#;
    let e = parse_sync_folder_items_response(body).unwrap().unwrap_err();
    assert_eq!(e.class, ErrorClass::Error);
    assert_eq!(e.code, ResponseCode::ErrorInvalidSyncStateData);
    assert!(!e.is_transient());
}

#[test]
fn a_sync_response_missing_its_state_flag_or_an_item_id_is_invalid() {
    let fixture = fixture_text(fixture!("syncfolderitems-response-changes.xml"));
    for (from, to, needle) in [
        (
            "<m:SyncState>H4sIAAAAAAAEAGZpeHR1cmUtcm9vbS0xLXN5bmMtMDAwNy8rPQ==</m:SyncState>",
            "",
            "no SyncState",
        ),
        (
            "<m:IncludesLastItemInRange>false</m:IncludesLastItemInRange>",
            "",
            "no IncludesLastItemInRange",
        ),
        (
            "<m:IncludesLastItemInRange>false<",
            "<m:IncludesLastItemInRange>no<",
            "not an xs:boolean",
        ),
        (
            r#"<t:ItemId Id="AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDA1"/>"#,
            "",
            "a Delete change has no ItemId",
        ),
        (
            r#"Id="AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDAx""#,
            r#"Id="""#,
            "a Create change has no ItemId",
        ),
    ] {
        let body = fixture.replacen(from, to, 1);
        assert_ne!(body, fixture, "{from}");
        assert!(
            matches!(
                parse_sync_folder_items_response(body.as_bytes()),
                Err(ResponseError::Invalid(ref m)) if m.contains(needle)
            ),
            "{needle}"
        );
    }
}

// ---- GetItem responses ----------------------------------------------------------------------

#[test]
fn a_get_item_batch_yields_found_items_and_not_found_errors_in_request_order() {
    let batch = parse_get_item_response(fixture!("getitem-response-batch.xml")).unwrap();
    assert_eq!(batch.len(), 4);

    let FetchedItem::Calendar(first) = &batch[0] else {
        panic!("{:?}", batch[0]);
    };
    assert_eq!(
        **first,
        CalendarItem {
            id: "AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDAx".to_owned(),
            change_key: Some("DwAAABYAAABjay0wMDAxLWE=".to_owned()),
            parent_folder_id: Some("AAMkAGZpeHR1cmUtcm9vbS0xAC4AAAAAY2FsZW5kYXI=".to_owned()),
            subject: Some("Budget review & Q3 planning".to_owned()),
            uid: Some("040000008200E00074C5B7101A82E0080000000066697874757265303031".to_owned()),
            start: Some(utc(2025, 3, 10, 9, 0, 0)),
            end: Some(utc(2025, 3, 10, 10, 30, 0)),
            is_all_day: Some(false),
            is_cancelled: Some(false),
            calendar_item_type: Some(CalendarItemType::Single),
            organizer: Some(Organizer {
                name: Some("Ada Example".to_owned()),
                email_address: Some("ada@corp.example".to_owned()),
                routing_type: Some("SMTP".to_owned()),
            }),
            location: Some("Room 1 (3rd floor)".to_owned()),
            is_recurring: Some(false),
            recurrence_id: None,
            original_start: None,
            appointment_sequence_number: Some(2),
            last_modified: Some(utc(2025, 3, 3, 8, 15, 42)),
        }
    );

    assert_eq!(
        batch[1],
        FetchedItem::Error(EwsError {
            class: ErrorClass::Error,
            code: ResponseCode::ErrorItemNotFound,
            message: Some("The item with this id is not in the store.".to_owned()),
            inner_code: None,
            back_off: None,
        })
    );

    let FetchedItem::Calendar(third) = &batch[2] else {
        panic!("{:?}", batch[2]);
    };
    assert_eq!(
        **third,
        CalendarItem {
            id: "AAMkAGZpeHR1cmUtcm9vbS0xAFEAAAAAb2NjLTAwMDM=".to_owned(),
            change_key: Some("DwAAABYAAABjay0wMDAzLWQ=".to_owned()),
            parent_folder_id: None,
            subject: Some("Weekly sync".to_owned()),
            uid: Some("040000008200E00074C5B7101A82E0080000000066697874757265303033".to_owned()),
            // +02:00 offsets converted to UTC.
            start: Some(utc(2025, 3, 12, 12, 0, 0)),
            end: Some(utc(2025, 3, 12, 13, 0, 0)),
            is_all_day: Some(false),
            is_cancelled: None,
            calendar_item_type: Some(CalendarItemType::Occurrence),
            organizer: Some(Organizer {
                name: Some("Grace Example".to_owned()),
                email_address: Some(
                    "/o=ExchangeLabs/ou=Exchange Administrative Group/cn=Recipients/cn=grace"
                        .to_owned()
                ),
                routing_type: Some("EX".to_owned()),
            }),
            location: None,
            is_recurring: Some(true),
            recurrence_id: Some(utc(2025, 3, 12, 12, 0, 0)),
            original_start: Some(utc(2025, 3, 12, 12, 0, 0)),
            appointment_sequence_number: None,
            last_modified: Some(utc(2025, 2, 20, 17, 4, 5) + TimeDelta::milliseconds(123)),
        }
    );

    assert_eq!(batch[3], FetchedItem::NotCalendar("Message".to_owned()));
}

#[test]
fn a_busy_fault_to_get_item_is_a_response_error() {
    let e = parse_get_item_response(fixture!("fault-server-busy.xml")).unwrap_err();
    assert!(e.is_transient());
    assert_eq!(
        e.fault().map(|f| f.back_off),
        Some(Some(Duration::from_millis(24_517)))
    );
}

#[test]
fn item_properties_of_the_wrong_type_make_the_response_invalid() {
    let fixture = fixture_text(fixture!("getitem-response-batch.xml"));
    for (from, to, needle) in [
        (
            "<t:Start>2025-03-10T09:00:00Z</t:Start>",
            "<t:Start>next Monday</t:Start>",
            "Start",
        ),
        (
            "<t:IsCancelled>false</t:IsCancelled>",
            "<t:IsCancelled>maybe</t:IsCancelled>",
            "IsCancelled",
        ),
        (
            "<t:CalendarItemType>Single</t:CalendarItemType>",
            "<t:CalendarItemType>Sometimes</t:CalendarItemType>",
            "CalendarItemType",
        ),
        (
            "<t:AppointmentSequenceNumber>2<",
            "<t:AppointmentSequenceNumber>two<",
            "AppointmentSequenceNumber",
        ),
        (
            r#"<t:ItemId Id="AAMkAGZpeHR1cmUtcm9vbS0xAEYAAAAAaXRlbS0wMDAx" ChangeKey="DwAAABYAAABjay0wMDAxLWE="/>"#,
            "",
            "no ItemId",
        ),
    ] {
        let body = fixture.replacen(from, to, 1);
        assert_ne!(body, fixture, "{from}");
        assert!(
            matches!(
                parse_get_item_response(body.as_bytes()),
                Err(ResponseError::Invalid(ref m)) if m.contains(needle)
            ),
            "{needle}"
        );
    }
}

#[test]
fn a_time_without_a_zone_is_taken_as_utc() {
    let fixture = fixture_text(fixture!("getitem-response-batch.xml"));
    let body = fixture.replacen(
        "<t:Start>2025-03-10T09:00:00Z</t:Start>",
        "<t:Start>2025-03-10T09:00:00</t:Start>",
        1,
    );
    let batch = parse_get_item_response(body.as_bytes()).unwrap();
    let FetchedItem::Calendar(first) = &batch[0] else {
        panic!("{:?}", batch[0]);
    };
    assert_eq!(first.start, Some(utc(2025, 3, 10, 9, 0, 0)));
}

#[test]
fn a_success_message_without_an_item_is_invalid() {
    let body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages><m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items/></m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>"#;
    assert!(matches!(
        parse_get_item_response(body),
        Err(ResponseError::Invalid(m)) if m.contains("holds no item")
    ));
}

// ---- FindItem responses ---------------------------------------------------------------------

#[test]
fn a_calendar_view_page_in_the_default_namespace_reads_its_items_and_paging_flags() {
    let page = parse_find_item_response(fixture!("finditem-calendarview-page.xml"))
        .unwrap()
        .unwrap();
    assert_eq!(page.total_items_in_view, Some(7));
    assert!(!page.includes_last_item_in_range);
    assert_eq!(
        page.items,
        [
            CalendarItem {
                id: "AAMkAGZpeHR1cmUtcm9vbS0yAEYAAAAAaXRlbS0wMTAx".to_owned(),
                change_key: Some("DwAAABYAAABjay0wMTAxLWE=".to_owned()),
                parent_folder_id: Some("AAMkAGZpeHR1cmUtcm9vbS0yAC4AAAAAY2FsZW5kYXI=".to_owned()),
                subject: Some("Interview".to_owned()),
                uid: Some(
                    "040000008200E00074C5B7101A82E0080000000066697874757265313031".to_owned()
                ),
                start: Some(utc(2025, 4, 7, 8, 0, 0)),
                end: Some(utc(2025, 4, 7, 9, 0, 0)),
                is_all_day: Some(false),
                is_cancelled: Some(false),
                calendar_item_type: Some(CalendarItemType::Single),
                // FindItem gives the organizer's name only.
                organizer: Some(Organizer {
                    name: Some("Linus Example".to_owned()),
                    email_address: None,
                    routing_type: None,
                }),
                location: Some("Room 2".to_owned()),
                is_recurring: Some(false),
                recurrence_id: None,
                original_start: None,
                appointment_sequence_number: Some(0),
                last_modified: Some(utc(2025, 4, 1, 7, 0, 0)),
            },
            CalendarItem {
                id: "AAMkAGZpeHR1cmUtcm9vbS0yAFEAAAAAZXhjLTAxMDI=".to_owned(),
                change_key: Some("DwAAABYAAABjay0wMTAyLWI=".to_owned()),
                parent_folder_id: None,
                subject: Some("Standup (moved)".to_owned()),
                uid: Some(
                    "040000008200E00074C5B7101A82E0080000000066697874757265313032".to_owned()
                ),
                start: Some(utc(2025, 4, 8, 8, 30, 0)),
                end: Some(utc(2025, 4, 8, 8, 45, 0)),
                is_all_day: Some(false),
                is_cancelled: Some(true),
                calendar_item_type: Some(CalendarItemType::Exception),
                organizer: None,
                location: None,
                is_recurring: Some(true),
                recurrence_id: Some(utc(2025, 4, 8, 7, 30, 0)),
                original_start: Some(utc(2025, 4, 8, 7, 30, 0)),
                appointment_sequence_number: None,
                last_modified: None,
            },
            CalendarItem {
                id: "AAMkAGZpeHR1cmUtcm9vbS0yAEYAAAAAaXRlbS0wMTAz".to_owned(),
                change_key: None,
                parent_folder_id: None,
                subject: None,
                uid: None,
                start: Some(utc(2025, 4, 9, 0, 0, 0)),
                end: Some(utc(2025, 4, 10, 0, 0, 0)),
                is_all_day: None,
                is_cancelled: None,
                calendar_item_type: None,
                organizer: None,
                location: None,
                is_recurring: None,
                recurrence_id: None,
                original_start: None,
                appointment_sequence_number: None,
                last_modified: None,
            },
        ]
    );
}

#[test]
fn a_calendar_view_range_too_big_is_an_error_message() {
    let body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:FindItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages><m:FindItemResponseMessage ResponseClass="Error"><m:MessageText>The window asked for is too wide.</m:MessageText><m:ResponseCode>ErrorCalendarViewRangeTooBig</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:FindItemResponseMessage></m:ResponseMessages></m:FindItemResponse></s:Body></s:Envelope>"#;
    let e = parse_find_item_response(body).unwrap().unwrap_err();
    assert_eq!(e.code, ResponseCode::ErrorCalendarViewRangeTooBig);
    assert!(!e.is_transient());
}

#[test]
fn an_empty_last_page_and_a_missing_total_are_accepted_but_a_missing_flag_is_not() {
    let fixture = fixture_text(fixture!("finditem-calendarview-page.xml"));
    let start = fixture.find("<t:Items>").unwrap();
    let end = fixture.find("</t:Items>").unwrap() + "</t:Items>".len();
    let empty = format!("{}<t:Items/>{}", &fixture[..start], &fixture[end..]).replace(
        r#"TotalItemsInView="7" IncludesLastItemInRange="false""#,
        r#"IncludesLastItemInRange="true""#,
    );
    assert_eq!(
        parse_find_item_response(empty.as_bytes()).unwrap(),
        Ok(CalendarViewPage {
            total_items_in_view: None,
            includes_last_item_in_range: true,
            items: Vec::new(),
        })
    );
    let no_flag = fixture.replace(r#" IncludesLastItemInRange="false""#, "");
    assert!(matches!(
        parse_find_item_response(no_flag.as_bytes()),
        Err(ResponseError::Invalid(m)) if m.contains("IncludesLastItemInRange")
    ));
    let bad_total = fixture.replace(r#"TotalItemsInView="7""#, r#"TotalItemsInView="-1""#);
    assert!(matches!(
        parse_find_item_response(bad_total.as_bytes()),
        Err(ResponseError::Invalid(m)) if m.contains("TotalItemsInView")
    ));
    let no_root = fixture.replace("RootFolder", "OtherFolder");
    assert!(matches!(
        parse_find_item_response(no_root.as_bytes()),
        Err(ResponseError::Invalid(m)) if m.contains("no RootFolder")
    ));
}
