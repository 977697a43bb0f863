//! EWS `GetFolder` and `ConvertId`: the two calls a client library makes before it touches a
//! calendar. exchangelib asks for the distinguished `root` folder, then `calendar`, and
//! guesses the server's version with a `ConvertId` of a dummy id; each must answer in
//! Exchange's shapes (with the `ServerVersionInfo` header) or the library concludes the
//! server speaks another schema version and gives up.
//!
//! A simulated room mailbox has six folders: the root, the top of the information store
//! (`msgfolderroot`) with the Calendar and Deleted Items, and the Recoverable Items root with
//! its Deletions folder (where exchangelib's `soft_delete` expects an item to go). Other
//! distinguished folders answer `ErrorFolderNotFound`, as a mailbox without that folder does.

use std::sync::Arc;

use axum::response::Response;

use super::{
    Caller, FOLDER_CHANGE_KEY, Target, error_message, operation_response, soap_fault,
    unreachable_folder,
};
use crate::ews::tree::{Node, esc};
use crate::ews::{NS_MESSAGES, Ns, Tok, XmlIn};
use crate::simulator::Shared;
use crate::simulator::calendar::{Room, short_hash};

/// The folders a simulated mailbox has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folder {
    Root,
    TopOfStore,
    Calendar,
    DeletedItems,
    RecoverableItemsRoot,
    RecoverableItemsDeletions,
}

impl Folder {
    fn from_distinguished(id: &str) -> Option<Self> {
        match id {
            "root" => Some(Self::Root),
            "msgfolderroot" => Some(Self::TopOfStore),
            "calendar" => Some(Self::Calendar),
            "deleteditems" => Some(Self::DeletedItems),
            "recoverableitemsroot" => Some(Self::RecoverableItemsRoot),
            "recoverableitemsdeletions" => Some(Self::RecoverableItemsDeletions),
            _ => None,
        }
    }

    fn distinguished(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::TopOfStore => "msgfolderroot",
            Self::Calendar => "calendar",
            Self::DeletedItems => "deleteditems",
            Self::RecoverableItemsRoot => "recoverableitemsroot",
            Self::RecoverableItemsDeletions => "recoverableitemsdeletions",
        }
    }

    const ALL: [Self; 6] = [
        Self::Root,
        Self::TopOfStore,
        Self::Calendar,
        Self::DeletedItems,
        Self::RecoverableItemsRoot,
        Self::RecoverableItemsDeletions,
    ];

    fn id(self, room: &Room) -> String {
        match self {
            Self::Root => room.root_folder_id(),
            Self::TopOfStore => room.top_of_store_folder_id(),
            Self::Calendar => room.calendar_folder_id(),
            Self::DeletedItems => room.deleted_items_folder_id(),
            Self::RecoverableItemsRoot => {
                format!("AAMkSIMRIR{:08x}{}", room.number, short_hash(&room.address))
            }
            Self::RecoverableItemsDeletions => {
                format!("AAMkSIMRID{:08x}{}", room.number, short_hash(&room.address))
            }
        }
    }

    fn parent(self) -> Option<Self> {
        match self {
            Self::Root => None,
            Self::TopOfStore | Self::RecoverableItemsRoot => Some(Self::Root),
            Self::Calendar | Self::DeletedItems => Some(Self::TopOfStore),
            Self::RecoverableItemsDeletions => Some(Self::RecoverableItemsRoot),
        }
    }

    /// The element a folder of this kind is written as, its class and its display name
    /// (Exchange's English names; the root has an empty one).
    fn looks(self) -> (&'static str, Option<&'static str>, &'static str) {
        match self {
            Self::Root => ("Folder", None, ""),
            Self::TopOfStore => ("Folder", Some("IPF.Note"), "Top of Information Store"),
            Self::Calendar => ("CalendarFolder", Some("IPF.Appointment"), "Calendar"),
            Self::DeletedItems => ("Folder", Some("IPF.Note"), "Deleted Items"),
            Self::RecoverableItemsRoot => ("Folder", None, "Recoverable Items"),
            Self::RecoverableItemsDeletions => ("Folder", None, "Deletions"),
        }
    }

    fn child_count(self) -> usize {
        Self::ALL
            .iter()
            .filter(|f| f.parent() == Some(self))
            .count()
    }
}

/// What a `FolderShape` asks for: everything but the id unless `IdOnly`, plus the named
/// `folder:` properties.
#[derive(Debug)]
struct FolderShape {
    id_only: bool,
    named: Vec<String>,
}

impl FolderShape {
    fn of(op: &Node) -> Self {
        let shape = op
            .children
            .iter()
            .find(|c| c.ns == Ns::Messages && c.local == "FolderShape");
        let id_only = shape
            .and_then(|s| s.child("BaseShape"))
            .is_none_or(|b| b.text == "IdOnly");
        let named = shape
            .and_then(|s| s.child("AdditionalProperties"))
            .into_iter()
            .flat_map(|a| a.children_named("FieldURI"))
            .filter_map(|f| f.attr("FieldURI"))
            .filter_map(|f| f.strip_prefix("folder:"))
            .map(str::to_owned)
            .collect();
        Self { id_only, named }
    }

    fn wants(&self, property: &str) -> bool {
        !self.id_only || self.named.iter().any(|n| n == property)
    }
}

fn folder_xml(room: &Room, folder: Folder, shape: &FolderShape) -> String {
    let (element, class, name) = folder.looks();
    let mut out = format!(
        r#"<t:{element}><t:FolderId Id="{}" ChangeKey="{FOLDER_CHANGE_KEY}"/>"#,
        esc(&folder.id(room))
    );
    if let Some(parent) = folder.parent()
        && shape.wants("ParentFolderId")
    {
        out.push_str(&format!(
            r#"<t:ParentFolderId Id="{}" ChangeKey="{FOLDER_CHANGE_KEY}"/>"#,
            esc(&parent.id(room))
        ));
    }
    if let Some(class) = class
        && shape.wants("FolderClass")
    {
        out.push_str(&format!("<t:FolderClass>{class}</t:FolderClass>"));
    }
    if shape.wants("DisplayName") {
        out.push_str(&format!("<t:DisplayName>{name}</t:DisplayName>"));
    }
    if shape.wants("TotalCount") {
        let total = match folder {
            Folder::Calendar => room.items.len(),
            Folder::Root
            | Folder::TopOfStore
            | Folder::DeletedItems
            | Folder::RecoverableItemsRoot
            | Folder::RecoverableItemsDeletions => 0,
        };
        out.push_str(&format!("<t:TotalCount>{total}</t:TotalCount>"));
    }
    if shape.wants("ChildFolderCount") {
        out.push_str(&format!(
            "<t:ChildFolderCount>{}</t:ChildFolderCount>",
            folder.child_count()
        ));
    }
    if shape.wants("EffectiveRights") {
        // The impersonating account acts as the mailbox owner.
        out.push_str("<t:EffectiveRights><t:CreateAssociated>true</t:CreateAssociated><t:CreateContents>true</t:CreateContents><t:CreateHierarchy>true</t:CreateHierarchy><t:Delete>true</t:Delete><t:Modify>true</t:Modify><t:Read>true</t:Read><t:ViewPrivateItems>true</t:ViewPrivateItems></t:EffectiveRights>");
    }
    if shape.wants("DistinguishedFolderId") {
        out.push_str(&format!(
            "<t:DistinguishedFolderId>{}</t:DistinguishedFolderId>",
            folder.distinguished()
        ));
    }
    if element == "Folder" && shape.wants("UnreadCount") {
        out.push_str("<t:UnreadCount>0</t:UnreadCount>");
    }
    out.push_str(&format!("</t:{element}>"));
    out
}

/// `GetFolder` of distinguished folders (`root`, `msgfolderroot`, `calendar`,
/// `deleteditems`, `recoverableitemsroot`, `recoverableitemsdeletions`) or of folder ids, in the impersonated room's mailbox; one response
/// message per folder asked for.
pub(super) fn get_folder(shared: &Arc<Shared>, op: &Node, who: &Caller) -> Response {
    let shape = FolderShape::of(op);
    let Some(ids) = op.child("FolderIds") else {
        return soap_fault(
            "ErrorSchemaValidation",
            &format!(
                "The request failed schema validation: The element 'GetFolder' in namespace '{NS_MESSAGES}' has incomplete content. List of possible elements expected: 'FolderIds' in namespace '{NS_MESSAGES}'."
            ),
            "",
        );
    };
    let fail = |code: &str, text: &str| error_message("GetFolder", code, text, "<m:Folders/>");
    let not_found = || {
        fail(
            "ErrorFolderNotFound",
            "The specified folder could not be found in the store.",
        )
    };
    let mut messages = String::new();
    for id in &ids.children {
        let answer = match id.local.as_str() {
            "DistinguishedFolderId" => match who.target(Some(id)) {
                Target::Own(room) => {
                    let state = shared.lock();
                    match (
                        state.cal.room(&room),
                        id.attr("Id").and_then(Folder::from_distinguished),
                    ) {
                        (Some(r), Some(folder)) => Ok(folder_xml(r, folder, &shape)),
                        _ => Err(not_found()),
                    }
                }
                other => {
                    let (code, text) = unreachable_folder(shared, &other);
                    Err(fail(code, &text))
                }
            },
            "FolderId" => {
                let wanted = id.attr("Id").unwrap_or_default();
                let state = shared.lock();
                // Folders belong to their mailbox: only the impersonated room's are found.
                let found = who
                    .mailbox
                    .as_deref()
                    .and_then(|m| state.cal.room(m))
                    .and_then(|r| {
                        Folder::ALL
                            .into_iter()
                            .find(|f| f.id(r) == wanted)
                            .map(|f| folder_xml(r, f, &shape))
                    });
                found.ok_or_else(not_found)
            }
            _ => continue,
        };
        match answer {
            Ok(folder) => messages.push_str(&format!(
                r#"<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders>{folder}</m:Folders></m:GetFolderResponseMessage>"#
            )),
            Err(message) => messages.push_str(&message),
        }
    }
    operation_response("GetFolder", &messages)
}

/// The attributes `names` of every element called `local` (in an EWS namespace), in
/// document order. The shared element tree keeps only the attributes the project's own
/// reader needs, so the simulator reads the few others it wants from the body itself.
pub(super) fn attrs_of<const N: usize>(
    body: &[u8],
    local: &str,
    names: [&str; N],
) -> Vec<[Option<String>; N]> {
    let mut out = Vec::new();
    let Ok(mut x) = XmlIn::new(body) else {
        return out;
    };
    loop {
        match x.next() {
            Ok(Tok::Open(open)) if open.ns.is_ews() && open.local() == local => {
                match open.attrs(names) {
                    Ok(values) => out.push(values),
                    Err(_) => return out,
                }
            }
            Ok(Tok::Eof) | Err(_) => return out,
            Ok(Tok::Open(_) | Tok::Close | Tok::Text(_) | Tok::Char(_)) => {}
        }
    }
}

/// `ConvertId`, one response message per `AlternateId`. The simulator keeps its items in
/// one format, so it converts an EWS id it holds to an EWS id (itself) and answers every
/// other id or format `ErrorInvalidIdMalformed`, as Exchange answers an id it cannot read.
pub(super) fn convert_id(shared: &Arc<Shared>, body: &[u8], who: &Caller) -> Response {
    let destination = attrs_of(body, "ConvertId", ["DestinationFormat"])
        .into_iter()
        .next()
        .and_then(|[d]| d);
    let Some(destination) = destination else {
        return soap_fault(
            "ErrorSchemaValidation",
            "The request failed schema validation: The required attribute 'DestinationFormat' is missing.",
            "",
        );
    };
    let state = shared.lock();
    let mut messages = String::new();
    for [id, format, mailbox] in attrs_of(body, "AlternateId", ["Id", "Format", "Mailbox"]) {
        let (id, format, mailbox) = (
            id.unwrap_or_default(),
            format.unwrap_or_default(),
            mailbox.unwrap_or_default(),
        );
        let held = state.cal.room(&mailbox).is_some_and(|r| {
            r.instance(&id).is_some()
                && who
                    .mailbox
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(&r.address))
        });
        if held && format == "EwsId" && destination == "EwsId" {
            messages.push_str(&format!(
                r#"<m:ConvertIdResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:AlternateId xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="t:AlternateIdType" Format="EwsId" Id="{}" Mailbox="{}"/></m:ConvertIdResponseMessage>"#,
                esc(&id),
                esc(&mailbox)
            ));
        } else {
            messages.push_str(&error_message(
                "ConvertId",
                "ErrorInvalidIdMalformed",
                "Id is malformed.",
                "",
            ));
        }
    }
    drop(state);
    operation_response("ConvertId", &messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::NS_TYPES;

    #[test]
    fn attributes_the_shared_tree_does_not_keep_are_read_from_the_body() {
        let body = format!(
            r#"<m:ConvertId xmlns:m="{NS_MESSAGES}" xmlns:t="{NS_TYPES}" DestinationFormat="EwsId"><m:SourceIds><t:AlternateId Id="a" Format="EwsId" Mailbox="r@x"/><t:AlternateId Id="b" Format="EntryId"/></m:SourceIds></m:ConvertId>"#
        );
        assert_eq!(
            attrs_of(body.as_bytes(), "ConvertId", ["DestinationFormat"]),
            [[Some("EwsId".to_owned())]]
        );
        let ids = attrs_of(body.as_bytes(), "AlternateId", ["Id", "Format", "Mailbox"]);
        assert_eq!(ids.len(), 2);
        assert_eq!(
            ids[1],
            [Some("b".to_owned()), Some("EntryId".to_owned()), None]
        );
        assert!(attrs_of(b"<not xml", "AlternateId", ["Id"]).is_empty());
    }
}
