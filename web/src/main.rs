//! Entry point of the browser app: a panic hook that shows a readable error, then
//! the yew app.

fn main() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        let msg = format!("Ringlab hit an internal error and stopped: {info}. Reload the page (the URL keeps your scenario).");
        if let Some(el) = web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.get_element_by_id("panic"))
        {
            el.set_text_content(Some(&msg));
            let _ = el.set_attribute("style", "display:block");
        }
    }));
    yew::Renderer::<ringlab_web::app::App>::new().render();
}
