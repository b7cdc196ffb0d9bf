//! A faithful in-memory CloudBase Auth v2 emulator.
