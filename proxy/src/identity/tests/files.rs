//! Which watch events make files mode reload (the reload must not trigger itself).

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode,
};
use notify::EventKind;

use crate::fswatch::changes_files;

#[test]
fn only_changes_trigger_a_reload_never_the_reload_reading_the_files() {
    for kind in [
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        EventKind::Access(AccessKind::Read),
        EventKind::Access(AccessKind::Close(AccessMode::Read)),
    ] {
        assert!(
            !changes_files(kind),
            "{kind:?} would make every reload trigger another"
        );
    }
    for kind in [
        EventKind::Create(CreateKind::File),
        EventKind::Modify(ModifyKind::Data(DataChange::Any)),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        EventKind::Remove(RemoveKind::File),
        EventKind::Access(AccessKind::Close(AccessMode::Write)),
        EventKind::Any,
    ] {
        assert!(changes_files(kind), "{kind:?} may bring new contents");
    }
}
