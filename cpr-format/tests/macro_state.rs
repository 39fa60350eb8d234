//! The state! macro: every supported field type, attributes, visibility and the schema it
//! derives.

use cpr_format::*;

cpr_format::state! {
    /// Inner described struct.
    #[derive(Default)]
    pub(crate) struct Inner {
        pub a: u8,
        #[hint(size)] pub b: u64,
    }

    /// All the types.
    #[section(name = "test.all", version = 3, min_version = 2, required = false)]
    #[derive(Default)]
    pub struct All {
        /// A flag.
        ///
        /// Second paragraph, not in the schema.
        pub flag: bool,
        pub u8_: u8,
        pub u16_: u16,
        pub u32_: u32,
        #[hint(hex)] pub u64_: u64,
        pub i8_: i8,
        pub i16_: i16,
        pub i32_: i32,
        pub i64_: i64,
        pub text: String,
        pub raw: Bytes,
        pub list: Vec<u32>,
        pub nested_list: Vec<Vec<i16>>,
        pub fixed: [u16; 3],
        pub opt: Option<String>,
        pub inner: Inner,
        pub inners: Vec<Inner>,
        #[since(2)] pub added: Option<Inner>,
        #[since(3)] #[hint(unit("ns"))] pub added_later: Option<u64>,
        private: u8,
    }

    /// No fields at all.
    #[section(name = "test.empty", version = 1, min_version = 1, required = true)]
    pub struct Empty {}
}

#[test]
fn the_derived_schema_describes_every_field() {
    let s = All::schema();
    assert_eq!(
        (s.name.as_str(), s.version, s.min_version, s.required),
        ("test.all", 3, 2, false)
    );
    assert_eq!(s.doc, "All the types.");
    assert_eq!(s.payload.name, "All");
    let f = |n: &str| {
        s.payload
            .fields
            .iter()
            .find(|f| f.name == n)
            .unwrap()
            .clone()
    };
    assert_eq!(f("flag").doc, "A flag.");
    assert_eq!(f("u64_").hint, Hint::Hex);
    assert_eq!(f("i64_").ty, FieldType::I64);
    assert_eq!(f("raw").ty, FieldType::Bytes { len: None });
    assert_eq!(
        f("nested_list").ty,
        FieldType::List(Box::new(FieldType::List(Box::new(FieldType::I16))))
    );
    assert_eq!(
        f("fixed").ty,
        FieldType::Array {
            elem: Box::new(FieldType::U16),
            len: 3
        }
    );
    assert_eq!(f("opt").ty, FieldType::Optional(Box::new(FieldType::Text)));
    assert!(!f("opt").is_required() && f("text").is_required());
    let FieldType::Struct(inner) = f("inner").ty else {
        panic!()
    };
    assert_eq!(inner.fields[1].hint, Hint::Size);
    assert_eq!(
        (f("added").since, f("added_later").since, f("flag").since),
        (2, 3, 1)
    );
    assert_eq!(f("added_later").hint, Hint::Unit("ns".into()));
    let names: Vec<_> = s.payload.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names.len(), 20);
    assert_eq!(names[0], "flag");
    assert_eq!(names[19], "private");
    assert!(Empty::schema().payload.fields.is_empty());
}

#[test]
fn every_type_round_trips_through_an_image() {
    let v = All {
        flag: true,
        u8_: 255,
        u16_: 65535,
        u32_: u32::MAX,
        u64_: u64::MAX,
        i8_: i8::MIN,
        i16_: i16::MIN,
        i32_: i32::MIN,
        i64_: i64::MIN,
        text: "héllo".into(),
        raw: Bytes(vec![0, 1, 255]),
        list: vec![1, 2, 3],
        nested_list: vec![vec![], vec![-1, 1]],
        fixed: [7, 8, 9],
        opt: Some("x".into()),
        inner: Inner { a: 1, b: 2 },
        inners: vec![Inner::default(), Inner { a: 3, b: 4 }],
        added: Some(Inner { a: 5, b: 6 }),
        added_later: None,
        private: 9,
    };
    let mut w = ImageWriter::new(sample::header());
    w.add_section("x", &v).unwrap();
    w.add_section("y", &All::default()).unwrap();
    w.add_section("e", &Empty {}).unwrap();
    let img = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    img.verify_payloads().unwrap();
    assert_eq!(img.section::<All>("x").unwrap(), Some(v));
    assert_eq!(img.section::<All>("y").unwrap(), Some(All::default()));
    assert_eq!(img.section::<Empty>("e").unwrap(), Some(Empty {}));
    // A None field added after version 1 is omitted, not written as null.
    let Value::Map(m) = img.find("test.all", "y").unwrap().value().unwrap() else {
        panic!()
    };
    assert!(!m.iter().any(|(k, _)| k.as_text() == Some("added_later")));
    assert!(m
        .iter()
        .any(|(k, v)| k.as_text() == Some("opt") && v.is_null()));
}

#[test]
fn require_compatible_is_a_typed_error_listing_the_reasons() {
    let mut w = ImageWriter::new(sample::header());
    w.add_section("e", &Empty {}).unwrap();
    w.add_section("x", &All::default()).unwrap();
    let img = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    img.require_compatible(&Schema::new().with::<Empty>().with::<All>())
        .unwrap();
    // A reader that knows only All: test.empty is required and unknown to it.
    let e = img
        .require_compatible(&Schema::new().with::<All>())
        .unwrap_err();
    match &e {
        Error::Incompatible { errors } => {
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].section, "test.empty");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "Image cannot be loaded: error: section test.empty: required section unknown to the reader"
    );
}

#[test]
fn from_file_reads_an_open_file_such_as_a_memfd() {
    use std::io::Write;
    let bytes = sample::small_writer().unwrap().to_bytes().unwrap();
    let p = std::env::temp_dir().join(format!("cpr-format-fromfile-{}", std::process::id()));
    std::fs::File::create(&p)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let f = std::fs::File::open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let img = Image::from_file(f).unwrap();
    assert_eq!(
        img.read_region("ram.extra").unwrap(),
        (0..100u8).collect::<Vec<_>>()
    );
    assert_eq!(img.to_bytes().unwrap(), bytes);
    assert!(img.path().unwrap().starts_with("/proc/self/fd"));
}
