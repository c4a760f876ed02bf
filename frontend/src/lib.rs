#![recursion_limit = "512"]
//! The browser entry point: hydrates the server-rendered console.

#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    // As `hydrate_lazy`: the current page's code chunk is loaded first, then hydrated.
    wasm_bindgen_futures::spawn_local(async {
        let body = leptos::prelude::document()
            .body()
            .expect("a page has a body");
        let owner = leptos::mount::hydrate_from_async(body.clone(), app::App).await;
        owner.forget();
        // Lets end-to-end tests (and curious people) know the page is interactive now.
        let _ = body.set_attribute("data-hydrated", "true");
    });
}
